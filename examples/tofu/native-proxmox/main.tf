# PIM's own provider builds the image and makes it a Proxmox template; bpg/proxmox
# clones the template into a VM. A script edit replaces the template and the clone.
terraform {
  required_providers {
    pim     = { source = "pim.invalid/pim/pim" }
    proxmox = { source = "bpg/proxmox" }
  }
}

variable "pim_config" {
  type    = string
  default = "../pim.yaml"
}
variable "pve_endpoint" {
  type    = string
  default = "https://pve.example.internal:8006/"
}
variable "pve_api_token" {
  description = "USER@REALM!TOKENID=SECRET (PIM reads its own token from $PIM_PROXMOX_TOKEN_SECRET)"
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

resource "pim_image" "demo" {
  config = var.pim_config
  image  = "demo"
}

resource "pim_deployment" "template" {
  config    = var.pim_config
  image     = pim_image.demo.image
  target    = "pve"
  image_key = pim_image.demo.key
}

resource "proxmox_virtual_environment_vm" "web" {
  node_name = pim_deployment.template.node
  name      = "web"
  clone {
    vm_id = pim_deployment.template.vmid
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

output "template_vmid" {
  value = pim_deployment.template.vmid
}
