"""Build the demo image with PIM, deploy it to Proxmox and AWS, and start a VM from
the template (pulumi-proxmoxve) and an EC2 instance from the AMI (pulumi-aws).

The image is examples/demo/pim.yaml's `demo`; the targets are inline here, with
their settings from the stack config (see README.md).
"""

import pulumi
import pulumi_aws as aws
import pulumi_proxmoxve as proxmoxve

import pim

config = pulumi.Config()
token_secret = pulumi.Config("pim").require_secret("proxmoxTokenSecret")  # PIM's provider reads it too
proxmox_url = config.require("proxmoxUrl")
node = config.get("proxmoxNode") or "pve"
storage = config.get("proxmoxStorage") or "local-lvm"
token_id = config.require("proxmoxTokenId")
ssh_key = config.require("sshPublicKey")
region = pulumi.Config("aws").get("region") or "us-east-1"

# The build: preview never builds; `up` builds once, then answers from PIM's cache.
# A build on a machine without KVM takes minutes: give Create room, and a limit.
image = pim.Image(
    "demo",
    config="../demo/pim.yaml",
    image="demo",
    tags={"stack": pulumi.get_stack()},
    opts=pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create="60m", update="60m")),
)

template = pim.Deployment(
    "demo-pve",
    image=image,
    target={
        "type": "proxmox",
        "api_url": proxmox_url,
        "node": node,
        "storage": storage,
        "token_id": token_id,
        "verify_tls": config.get_bool("proxmoxVerifyTls") is not False,
        "ca_file": config.get("proxmoxCaFile"),
    },
    tags={"stack": pulumi.get_stack()},
)

ami = pim.Deployment(
    "demo-aws",
    image=image,
    target={
        "type": "aws",
        "region": region,
        "copy_to": config.get_object("awsCopyTo") or [],
        "endpoint_url": config.get("awsEndpoint"),  # only for a local test server
    },
    tags={"Project": "pim-example"},
)

pve = proxmoxve.Provider(
    "pve",
    endpoint=proxmox_url,
    api_token=pulumi.Output.concat(token_id, "=", token_secret),
    insecure=config.get_bool("proxmoxVerifyTls") is False,
)

vm = proxmoxve.VmLegacy(
    "demo-vm",
    node_name=node,
    clone=proxmoxve.VmLegacyCloneArgs(vm_id=template.vmid.apply(int), full=True),
    agent=proxmoxve.VmLegacyAgentArgs(enabled=True),
    initialization=proxmoxve.VmLegacyInitializationArgs(
        datastore_id=storage,
        user_account=proxmoxve.VmLegacyInitializationUserAccountArgs(username="debian", keys=[ssh_key]),
        ip_configs=[proxmoxve.VmLegacyInitializationIpConfigArgs(
            ipv4=proxmoxve.VmLegacyInitializationIpConfigIpv4Args(address="dhcp"))],
    ),
    opts=pulumi.ResourceOptions(provider=pve),
)

key_pair = aws.ec2.KeyPair("demo-key", public_key=ssh_key)
instance = aws.ec2.Instance(
    "demo-ec2",
    ami=ami.ami_id,
    instance_type=config.get("instanceType") or "t3.micro",
    key_name=key_pair.key_name,
    tags={"Name": "pim-demo", "PimContentKey": image.content_key},
)

pulumi.export("content_key", image.content_key)
pulumi.export("qcow2", image.path)
pulumi.export("sha256", image.sha256)
pulumi.export("template_vmid", template.vmid)
pulumi.export("ami_ids", ami.ami_ids)
pulumi.export("vm_id", vm.vm_id)
pulumi.export("instance_id", instance.id)
