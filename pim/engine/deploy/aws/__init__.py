"""AWS target: a built image as an AMI (and its EBS snapshot) in one or more regions.

    backend.py   deploy / exists / delete: the target interface pim.engine.deploy calls
    common.py    boto3 clients (botocore standard retries), tags, names, error mapping
    direct.py    the snapshot written with the EBS direct APIs, block by block
    s3import.py  the snapshot made by S3 + ImportSnapshot (accounts without EBS direct)
    amis.py      register, copy, find and delete AMIs and their snapshots
    blocks.py    a qcow2 read as the raw disk it stands for (qemu-nbd), zeros skipped

Every AMI and snapshot carries the tag pim:key = the build's content key: a second
deploy finds them and creates nothing; delete removes every one in every region.
boto3 is imported only when this package's modules are used.
"""
