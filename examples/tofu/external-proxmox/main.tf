# The template PIM deployed to Proxmox, found by `pim tofu external` and cloned into a
# VM that cloud-init configures (bpg/proxmox). Deploy first (`pim deploy demo --target
# pve`), or set mode = "build" to let the lookup build and deploy what is missing.
terraform {
  required_providers {
    external = { source = "hashicorp/external" }
    proxmox  = { source = "bpg/proxmox" }
  }
}

variable "pim_config" {
  type    = string
  default = "../pim.yaml"
}
variable "image" {
  type    = string
  default = "demo"
}
variable "pve_endpoint" {
  type    = string
  default = "https://pve.example.internal:8006/"
}
variable "pve_api_token" {
  description = "USER@REALM!TOKENID=SECRET"
  type        = string
  sensitive   = true
}
variable "ssh_public_key" {
  type = string
}

provider "proxmox" {
  endpoint  = var.pve_endpoint
  api_token = var.pve_api_token
}

data "external" "template" {
  program = ["pim", "tofu", "external"]
  query = {
    config = var.pim_config
    image  = var.image
    target = "pve"
  }
}

resource "proxmox_virtual_environment_vm" "web" {
  node_name = data.external.template.result.node
  name      = "web"
  clone {
    vm_id = tonumber(data.external.template.result.template_id)
  }
  agent {
    enabled = true
  }
  initialization {
    ip_config {
      ipv4 {
        address = "dhcp"
      }
    }
    user_account {
      username = "debian"
      keys     = [var.ssh_public_key]
    }
  }
}

output "vm_id" {
  value = proxmox_virtual_environment_vm.web.vm_id
}
