"""QEMU control: a pure argv builder, one owner of each process, QMP, guest agent, accel probe."""
