"""Pre-migration validation, the product behind ``virtproof premigrate`` and the V2V suite.

Per source disk or OVA: ``imagefile`` and ``ova`` (what the file is, safely), ``inspect`` (one
libguestfs handle, ``gfs``), ``checks`` and ``findings`` (what would break on virtio), ``convert``
(qemu-img, virt-v2v), ``fix`` (native repairs on a copy), ``manifests`` (KubeVirt VM + CDI
DataVolume), ``bootproof`` (boot on KubeVirt's devices with the lab's qemu launcher), ``verdict``,
``pipeline`` (all of it for one source) and ``record`` (samples and verdict files).
``fixtures`` builds the disks the tests and the V2V suite validate.
"""
