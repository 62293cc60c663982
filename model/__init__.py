"""Currents model package: item encoder, user interest model, training and evaluation.

Serving imports model.checkpoint, model.interest, model.serving, model.state and model.encoder;
model.baselines, model.train and model.evaluate are offline tools.
"""
