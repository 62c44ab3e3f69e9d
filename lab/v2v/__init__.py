"""Pre-migration validation: inspect, convert and prove-boot source disks (``virtproof premigrate``)."""
