"""Tooling of the command line and the bench/ scripts: the machine (env), the model zoo
(models), timing (timing), bytes and FLOPs (traffic), whole-model parity (parity) and
plain-text tables (report).

``import fused_resnet`` loads none of it. Everything here is importable without a GPU
and without the compiled extension.
"""
