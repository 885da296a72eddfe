#!/bin/sh
set -eu
echo "$GREETING" > /etc/pim-demo
echo "provisioned $(hostname) on $(uname -r)"
