"""virtproof: proof that VMs boot, move, pack and survive on a virtualization platform."""

__version__ = "0.1.0"
