"""Backend kernels: one function per op, its implementation chosen by backend at trace time.

`conv.conv3d`, `norm.group_norm`, `attention.attention`. Nothing here is stored in a config or
a checkpoint; model code calls these and never names a kernel.
"""
