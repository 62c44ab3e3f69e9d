"""Pre-migration validation, the product behind ``virtproof premigrate`` and the V2V suite.

Per source disk or OVA: ``imagefile`` and ``ova`` (what the file is, safely), ``inspect`` (one
libguestfs handle, ``gfs``), ``checks`` and ``findings`` (what would break on virtio), ``convert``
(qemu-img, virt-v2v), ``fix`` (native repairs on a copy), ``manifests`` (KubeVirt VM + CDI
DataVolume), ``bootproof`` (boot on KubeVirt's devices with the lab's qemu launcher), ``verdict``,
``pipeline`` (all of it for one source) and ``record`` (samples and verdict files).
Beside them: ``host`` (what this host must have first; a host problem is never a verdict),
``vmware`` (``.vmx``/OVF metadata and its concerns), ``windows`` (registry findings; Windows is
inspected, never booted), ``netconfig`` (NIC configuration bound to names or MACs),
``initramfs`` (listing an initramfs without unpacking it), ``devicemodel`` (the VM's KubeVirt
devices as qemu options), ``probe`` (the boot probe put in an overlay), ``milestones`` and
``screen`` (where a boot is, from the console, the screen and SSH) and ``cancel`` (one stop flag
for Ctrl-C and SIGTERM). ``fixtures`` builds the disks the tests and the V2V suite validate.
"""
