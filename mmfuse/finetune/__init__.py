"""End-to-end fine-tuning: the text and image backbones with a fusion head on top, on raw data.

Nothing here is a copy: the backbones come from the extraction loaders (hub ids, local folders,
torchvision names, the efficientnet-lite aliases, weight files), the text vector is pooled as in
extraction (``pool_text``), the fusion module is the registered head class that trains on cached
features, and the loss, class weights, schedule, metrics and run-folder files are the heads' own.
The tuned backbones are saved in the forms ``extract`` reads (``RUN/text/``: a Hugging Face
folder with its tokenizer; ``RUN/image.pt``: the image model's state dict), so a cache of tuned
features, and every head and grid on it, is one ``extract`` away.

By job: ``config`` (FineTuneConfig), ``model`` (the model, freezing, prediction), ``data`` (batches
of texts + images), ``loop`` (the training loop and its checkpoint), ``run`` (``finetune()``, the run
folder, FineTunedRun). Precision (names, autocast, the auto rule) is ``mmfuse.precision``'s.
"""
from ..precision import autocast as _autocast, choose_precision  # noqa: F401 - light, and re-exported
from .._lazy import attach

# imported on first use (mmfuse._lazy): the CLI reads a few constants without the whole package
__getattr__, __dir__, _names = attach(__name__, {
    ".config": ["ALL", "PRECISIONS", "FineTuneConfig"],
    ".data": ["AugmentedImages", "Batches", "PairLoader"],
    ".model": ["FineTuneModel", "_train_mode", "build_model", "freeze", "image_stages", "predict_loader",
               "text_layers"],
    ".run": ["FineTunedRun", "finetune"],
})
__all__ = ["finetune", "FineTuneConfig", "FineTunedRun", "FineTuneModel", "PairLoader", "Batches", "AugmentedImages",
           "build_model", "freeze", "text_layers", "image_stages", "predict_loader", "choose_precision", "ALL",
           "PRECISIONS"]
