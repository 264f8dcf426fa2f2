"""Serve the production page policy (BentoML), log every served card, and join feedback into rewards.

Modules: ``config`` (the ``serving:`` params), ``schemas`` (request/response models), ``engine``
(in-process page building from a policy bundle), ``logwriter`` (rotating impression/feedback files),
``join`` (served impressions + feedback → reward-labelled batch), ``package`` (policy bundle →
BentoML model, Bento build), ``service`` (the BentoML service ``HomePage``).  Importing this package
imports nothing heavy.
"""
