"""Host-side services a build guest talks to, all bound to loopback: the answer-file
server, the package cache proxy and the installer's syslog receiver."""
