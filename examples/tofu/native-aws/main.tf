# PIM's own provider: `pim_image` builds the image (a plan shows a replacement exactly
# when its content key changes: an edited script, a new ISO), `pim_deployment` turns
# the build into an AMI, and the instance boots it. `terraform destroy` removes the
# instance and the AMI with its snapshots; the build stays in PIM's cache.
terraform {
  required_providers {
    pim = { source = "pim.invalid/pim/pim" }
    aws = { source = "hashicorp/aws" }
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
variable "aws_target" {
  type    = string
  default = "aws"
}
variable "region" {
  type    = string
  default = "us-east-1"
}
variable "aws_endpoint" {
  description = "A local AWS endpoint (tests); null for AWS itself"
  type        = string
  default     = null
}

provider "aws" {
  region                      = var.region
  skip_credentials_validation = var.aws_endpoint != null
  skip_requesting_account_id  = var.aws_endpoint != null
  skip_metadata_api_check     = var.aws_endpoint != null
  endpoints {
    ec2 = var.aws_endpoint
    sts = var.aws_endpoint
  }
}

resource "pim_image" "demo" {
  config = var.pim_config
  image  = var.image
}

resource "pim_deployment" "ami" {
  config    = var.pim_config
  image     = pim_image.demo.image
  target    = var.aws_target
  image_key = pim_image.demo.key
}

resource "aws_instance" "web" {
  ami           = pim_deployment.ami.ami_id
  instance_type = "t3.micro"
  tags = {
    Name    = "pim-${var.image}"
    pim_key = pim_image.demo.key
  }
}

output "image_key" {
  value = pim_image.demo.key
}
output "qcow2" {
  value = pim_image.demo.path
}
output "ami_id" {
  value = pim_deployment.ami.ami_id
}
output "instance_id" {
  value = aws_instance.web.id
}
