"""The real model families through diffusers, fine-tuned through LoRA adapters (peft), one module each:
  StableDiffusionPolicy     (unet.py) Stable Diffusion 1.x: epsilon prediction, DDIM (a DiffusionPolicy),
  LatentConsistencyPolicy   (unet.py) a latent consistency model, LCM-Dreamshaper-v7's layout (a ConsistencyPolicy),
  StableDiffusion3Policy    (sd3.py) Stable Diffusion 3: rectified flow on a shifted time grid (a FlowPolicy).
config.py holds their configs, hub.py their loading, lora.py what they share.

Each subclasses the embedded family it scales up, so the samplers, transitions, log-probabilities and training
losses are the code the digits world runs and tests. What changes is where the chain lives (a VAE's latent
space: `encode` and `decode`), what conditions the network (CLIP / T5 text encoders: `_text`), and how it is
called (`predict`): classifier-free guidance,
  eps = eps(x, t, null) + w (eps(x, t, c) - eps(x, t, null)),
evaluated as one network call on the doubled batch [null, c] (the meter counts 2B evaluations), with the
empty prompt as null as diffusers' pipelines use it; LCM instead conditions its one call on an embedding of
w (the guidance it was distilled from). The training losses regress the plain conditional prediction.

The networks are frozen in `dtype`; LoRA adapters (float32) on `lora_target_modules` are the only trainable
parameters, the only weights in `state_dict`, and `frozen_copy` is the base model itself: the same modules,
called with the adapters off, until it is loaded with the policy's weights (GARDO's reset), which it then holds in an
adapter of its own. With `finetune='full'` every weight of the denoiser trains, and the reference is a copy of the
base denoiser (config.py; sharded with FSDP2 by bench/parallel.py). On CUDA the denoiser and the VAE run under
autocast in `dtype` (the text encoders in their own weights' dtypes); on CPU everything runs in float32. Weights load
from a hub id (the local cache first; downloaded only when the hub is reachable) or a local directory in diffusers'
pipeline layout.

Departures from the pipelines: the prompt cache holds every prompt's embeddings (on the CPU) for the
policy's life; SD3's flow matching samples t uniformly (the base FlowPolicy's loss), not SD3's logit-normal.
"""
