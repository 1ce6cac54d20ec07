"""The method toolkit: the math the registered methods share, written once. Registered methods import it, never
each other.

  policy_gradient  the chain policy-gradient contract: the options its methods share (PolicyGradientOptions,
                   PPOOptions and their mixins), their trainer base, the trust regions (PPO's clipped surrogate,
                   DPPO's KL mask), group-normalized advantages and the PPO (+ KL) update over the chain's steps,
                   (B,) or (B, N) advantages
  flow_matching    the flow-matching error, the likelihood surrogate of awm and dgpo
  weightings       reward weightings (exp / linear / rank / uniform) of weighted maximum-likelihood steps
  divergences      f-divergences between the per-step Gaussians of two policies, closed form and Monte Carlo
  preferences      preference pairs from the annotator, and Bradley-Terry reward models fitted to them
"""
