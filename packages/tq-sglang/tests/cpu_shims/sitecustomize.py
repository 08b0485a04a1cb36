"""CI-only: lets PyPI's torchvision import beside the CPU torch, in every SGLang process.

transformers imports torchvision when it is installed, and SGLang's image-processor
registrations need transformers to see it. PyPI's torchvision 0.28.0 is a CUDA build whose C
operators cannot load beside torch 2.13.0+cpu, and its import then fails registering fake
kernels for ``torchvision::nms`` / ``qnms``, which do not exist. Declaring the two schemas
(no kernels) lets the import finish; calling either still fails. Python runs this file at
start-up when its folder is on PYTHONPATH, which only the tq-sglang nox sessions do, so
SGLang's spawned scheduler processes get it too.
"""

import torch

_torchvision_schemas = torch.library.Library("torchvision", "DEF")
_torchvision_schemas.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_torchvision_schemas.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
