"""`python -m bench throughput` (the timing loop in timing.py, the real-size architectures in architectures.py, FLOP
and time counting in counting.py): images per second, peak memory and model FLOPs utilization of each method's
training step on the real-size architectures, with random weights (nothing to download).

  sd15  Stable Diffusion 1.5: its UNet (860M), VAE and CLIP ViT-L/14 text encoder, at 512 px;
  lcm   the same UNet with LCM's guidance embedding (LCM-Dreamshaper-v7's architecture), at 512 px;
  sd3   SD3-medium: its MMDiT (2B), 16-channel VAE and both CLIP text encoders, at 1024 px; T5-XXL is replaced by
        the zeros diffusers' pipeline uses without it (its 4.7B parameters would only encode prompts), so the joint
        attention still sees all 333 text tokens;
  sd35  SD3.5-medium: its MMDiT-X (2.5B: a second attention in its first 13 blocks, RMS-normed queries and keys) with
        SD3's VAE and encoders (T5 as zeros), at 512 px, where Flow-GRPO fine-tunes it;
  flux  FLUX.1-dev: its transformer (11.9B: 19 double and 38 single blocks, the guidance embedding), 16-channel VAE
        and CLIP text encoder, at 512 px; T5-XXL as zeros (512 tokens).
The reward is the LAION aesthetic predictor's architecture (CLIP ViT-L/14 + MLP head), differentiable, so every
method runs (those that learn from feedback label by it, with random pixels as demonstrations). Each method takes
the nightly suite's config (bench/experiments/nightly_gpu.py) and LoRA in the model's precision (bf16 on a GPU);
one step warms up, then `repeats` steps are timed. Reported per step:
  images/s     images the step sampled and trained on (prompts_per_iter x samples_per_prompt; sft: its batch) /
               wall seconds;
  peak GiB     torch.cuda.max_memory_allocated; on the meta device the peak of the step's live tensors
               (counting.LiveMemory: float32 there, and attention's scores materialised, so an upper bound of a
               GPU's bf16 step with fused attention); n/a on a CPU;
  per GPU      with `--finetune full --shards N`: that peak with FSDP2 over N GPUs, computed (timing.sharded_peak);
  bwd TFLOP/s  FLOPs inside the step's backward pass(es), counted by torch's FlopCounterMode, over their wall time;
  MFU          that over the GPU's dense bf16 peak, known from its name (PEAK_BF16_TFLOPS). With gradient
               checkpointing the backward also recomputes forwards; those FLOPs are counted too (hardware FLOPs),
               so compare MFU without it (`--no-checkpointing`) where memory allows.
`--finetune full` trains every weight of the denoiser instead of LoRA adapters, sharded with FSDP2 over a process group
of one (as `bench run --sharding fsdp2` runs on one GPU; on the meta device unsharded, its sharding computed).
`--size tiny` runs the same code on the toy models of models/tiny_pipelines.py: what the tests run on a CPU.
"""
