"""The names other modules and users rely on, each defined once; this module imports nothing.

Architectures, attribution methods and their labels, shaping methods and the file names of
checkpoints. Objectives and noise modes are records in :mod:`nsde_ray.registry`. The MLflow
names built on them (tags, metrics, artifacts) are in ``docs/mlflow.md``.
"""

CIFAR_DEPTHS = {
    "cifar_resnet8": 8,
    "cifar_resnet14": 14,
    "cifar_resnet20": 20,
    "cifar_resnet32": 32,
    "cifar_resnet56": 56,
}
TORCHVISION_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
)
ARCHS = tuple(CIFAR_DEPTHS) + TORCHVISION_ARCHS  # every name models.build_model accepts

METHODS = ("ig", "ig_nt", "saliency", "deeplift", "deepshap")  # AAAI 2022 Table 1's row order
METHOD_LABELS = {"ig": "IG", "ig_nt": "IG + NT", "saliency": "Saliency", "deeplift": "DeepLIFT", "deepshap": "DeepSHAP"}

# How attribution shaping gets its maps: a refresh pass of IG or Saliency, or each training step's input gradient.
SHAPING_METHODS = ("ig", "saliency", "training_gradient")

CHECKPOINT_FILE = "checkpoint.pt"  # a training checkpoint, in each of a Train run's checkpoint directories
MODEL_FILE = "model.pt"  # an exported model (weights, config, preprocessing), in a trial's model/ artifacts
LEGACY_MODEL_FILE = "checkpoint.pt"  # what exported models were called before MODEL_FILE; still read
