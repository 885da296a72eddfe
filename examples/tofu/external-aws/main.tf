# PIM through Terraform's external data source: `pim tofu external` answers every
# plan from PIM's cache (mode "lookup": never builds, fails if the image is missing);
# mode "build" builds and deploys what is missing.
terraform {
  required_providers {
    external = { source = "hashicorp/external" }
    aws      = { source = "hashicorp/aws" }
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
  description = "Target in pim_config that deploys to AWS"
  type        = string
  default     = "aws"
}
variable "mode" {
  type    = string
  default = "lookup"
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

data "external" "image" {
  program = ["pim", "tofu", "external"]
  query = {
    config = var.pim_config
    image  = var.image
    target = var.aws_target
    mode   = var.mode
  }
}

resource "aws_instance" "web" {
  ami           = data.external.image.result.ami_id
  instance_type = "t3.micro"
  tags = {
    Name    = "pim-${var.image}"
    pim_key = data.external.image.result.key
  }
}

output "image_key" {
  value = data.external.image.result.key
}
output "ami_id" {
  value = data.external.image.result.ami_id
}
output "instance_id" {
  value = aws_instance.web.id
}
