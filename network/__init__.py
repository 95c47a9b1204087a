"""Pod networking: namespaces, CNI configs and plugins, DNS and hosts files, netlink."""
