"""Talking to a running build guest from the host: SSH sessions and the serial
console watcher."""
