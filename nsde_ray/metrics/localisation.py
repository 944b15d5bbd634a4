"""Consistency with localisation (shaping paper, "Consistency with Weakly Supervised Localization").

Thresholding |attribution| at every level t gives a region R_t; against a foreground G_F and
background G_B, TPR = |R_t ∩ G_F| / |G_F| and FPR = |R_t ∩ G_B| / |G_B|. The area under that
TPR-FPR curve over all thresholds is the ROC AUC of |attribution| as a foreground score, which
scikit-learn computes exactly (ties handled by the trapezoid rule).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def localisation_auc(saliency: torch.Tensor, foreground: torch.Tensor) -> np.ndarray:
    """Per-image AUC (B,) of the TPR-FPR curve; saliency (B, H, W) (its absolute value is used),
    foreground (B, H, W) bool. NaN for an image whose mask is all foreground or all background."""
    if saliency.shape != foreground.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and foreground masks {tuple(foreground.shape)} differ")
    scores = saliency.abs().flatten(1).cpu().numpy()
    labels = foreground.flatten(1).cpu().numpy().astype(bool)
    return np.array([roc_auc_score(y, s) if 0 < y.sum() < y.size else np.nan for y, s in zip(labels, scores)])
