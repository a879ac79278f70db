"""Provable robustness under observation attacks: policy-smoothing certificates.

Kumar, Levine, Feizi, "Policy Smoothing for Provably Robust Reinforcement Learning" (ICLR 2022).
`certify` turns the total rewards of clean smoothed episodes into certified lower bounds that hold
against any adaptive adversary with a total l2 budget B over the episode.
"""
