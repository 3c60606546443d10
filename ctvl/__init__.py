"""ctvl: CT vision-language survival modelling.

A Merlin-style 3D CT encoder, a projection into a Llama-family decoder fine-tuned
with LoRA, and a survival branch (DeepSurv or DeepHit) trained jointly on
question-answer pairs built from radiology reports. See README.md.
"""

__version__ = "0.1.0"
