"""What an image is made of and where it came from, in standard formats.

packages   the guest's package database, read before it shuts down
sbom       a CycloneDX 1.5 JSON SBOM of those packages, the image as its subject
statement  an in-toto Statement with a SLSA v1 provenance predicate
signing    the DSSE envelope around it, signed with a local ed25519 key
verify     the checks `pim images verify` makes

Everything here runs on files and JSON; nothing starts QEMU.
"""
