"""Guest images built locally from Debian packages: ``micro`` (kernel, busybox, dropbear in an
initramfs; its scripts ``init.sh``, ``udhcpc.sh`` and ``vp-dirty.sh`` ship as package data),
``store`` (built images, cached by the hash of their inputs), and the helpers ``debs``, ``elf``, ``cpio``."""
