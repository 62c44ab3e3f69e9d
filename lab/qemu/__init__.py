"""The local qemu lab: ``lab`` (up/down/clean), ``network`` and ``l2`` (nodes and the guest segment),
``process`` (the one qemu launcher, also used by the premigrate boot proof), ``qmp``, ``migration``,
``accel`` (KVM only if a probe guest boots under it), ``defects`` (known qemu defects that break
guests: how they are detected and worked around), ``state`` (what a lab recorded on disk), and
``platform`` (the Platform over all of it)."""
