"""The ops: Triton kernels (`<op>_triton.py`) and their PyTorch references (`<op>_reference.py`, the executable
spec and the CPU path). A leaf: these files import nothing from the rest of the package but `precision` and the
kernels' own `_triton_utils`. Which of the two runs a call, and the kernels' self-checks, are decided outside
(`modeling/kernels.py`, `modeling/kernel_selfcheck.py`); the decode steps, which run the solver, are
`modeling/decode_steps.py`.
"""
