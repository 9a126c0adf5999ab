"""CPU runtimes for the extraction towers: OpenVINO and ONNX Runtime, fp32 and calibrated static int8, against
mmfuse's torch path, on the same inputs, in one run.

    python bench/experiments/cpu_runtimes.py --data ../shared/datasets/mvsa [--texts 640] [--images 320]
        [--calibration 300] [--rows 800] [--repeats 3] [--isa native|avx2] [--no-downstream] [--max-wait 300]

Needs ``pip install openvino nncf onnxruntime onnx`` (openvino, onnxruntime and onnx are mmfuse's extras since their
fp32 image paths were adopted as ``--image-runtime``; nncf is for this script's int8 only). The towers are
the offline backbones, minilm (text/cls and text/mean of the last layer, mmfuse's pooling inside the graph) and
efficientnet-lite0 (image/pooled). Rows: a seeded permutation of mvsa's labelled training rows; the first
``--calibration`` calibrate the int8 models (NNCF ``nncf.quantize`` for OpenVINO; ``quantize_static`` with a
CalibrationDataReader, QDQ, per-channel weights for ONNX Runtime; one sample per calibration step), the next
``--rows`` are evaluated (disjoint from calibration). Texts are tokenised once and cut into mmfuse's
length-sorted batches of 64; images are decoded once by mmfuse's own decoder (``ImageFiles``) and normalised
into batches of 8, mmfuse's CPU batch: every runtime gets the same arrays, so decode is not in the comparison
(the end-to-end rows add it back: mmfuse's ``encode_images`` against the same decode loop feeding the
other runtime).

Timing: every configuration is warmed up, then timed in rounds, configurations interleaved, until each has
``--repeats`` passes during which other processes kept less than 0.1 of a core busy (/proc/stat's busy time minus
this process's own; at most 3 x ``--repeats`` rounds, then the least disturbed passes), the median taken;
before each round the script waits (30 s steps, at most ``--max-wait`` s) while the 1-minute load average is
above 1.5 (the machine is shared). Fidelity: the cosine of every vector (all ``--rows`` rows) to torch fp32's.
Downstream: each runtime's text/mean and image/pooled of the ``--rows`` rows, mmfuse's concat head (20 epochs)
and logreg head on the same 5 stratified folds; paired per-fold macro-F1 differences to torch fp32.

``--isa avx2`` re-runs the script under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2 OV_CPU_MAX_ISA=AVX2``: torch and OpenVINO's oneDNN primitives and own JIT kernels
are capped (OV_CPU_MAX_ISA caps OpenVINO's kernels, ONEDNN_MAX_CPU_ISA its bundled oneDNN; the compiled
model's per-node kernel names are printed as proof), but the MLAS sgemm OpenVINO uses for some fp32
FullyConnected nodes, and all of ONNX Runtime (MLAS), dispatch on CPUID with no cap: the table marks those rows.
Skips (exit 0) when the data set is absent.
"""
from __future__ import annotations

import collections
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: the shared module, common.py
from common import add_data, cosine, cpu_line, parser, timed

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "OV_CPU_MAX_ISA": "AVX2"}
TEXT_BATCH, IMAGE_BATCH = 64, 8  # mmfuse's defaults on a CPU
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
REF = "torch fp32 (mmfuse's path)"  # the reference of every cosine (images: the eager model)
DEFAULT_BF16 = "torch bf16 autocast (mmfuse's default here)"


# --- the machine --------------------------------------------------------------------------------------------
MAX_WAIT = [300]  # --max-wait
LOADS: list[float] = []  # the 1-minute load average at the start of every timed round


def wait_for_quiet(limit: float = 1.5, most: int | None = None) -> float:
    """Wait (30 s steps, at most ``most`` s) while the 1-minute load average is above ``limit``; return it."""
    waited, most = 0, MAX_WAIT[0] if most is None else most
    while os.getloadavg()[0] > limit and waited < most:
        print(f"  load {os.getloadavg()[0]:.2f} > {limit}: waiting 30 s", flush=True)
        time.sleep(30)
        waited += 30
    LOADS.append(os.getloadavg()[0])
    return LOADS[-1]


def restricted() -> bool:
    return all(os.environ.get(k) == v for k, v in AVX2_ENV.items())


# --- inputs -------------------------------------------------------------------------------------------------
def text_batches(tokenizer, texts: list[str], batch: int) -> tuple[list[dict], np.ndarray]:
    """mmfuse's text batches (tokenize, length-sorted, padded per batch) as int64 arrays, and the order."""
    from mmfuse.extract.text import tokenize

    enc = tokenize(tokenizer, texts, 128)
    order = np.argsort([len(ids) for ids in enc["input_ids"]], kind="stable")
    out = []
    for start in range(0, len(order), batch):
        pos = order[start:start + batch]
        b = tokenizer.pad({k: [enc[k][i] for i in pos] for k in TEXT_INPUTS}, return_tensors="np")
        out.append({k: np.ascontiguousarray(b[k], dtype=np.int64) for k in TEXT_INPUTS})
    return out, order


def image_arrays(paths: list, prep: dict) -> np.ndarray:
    """mmfuse's decode (ImageFiles: JPEG draft, antialiased resize, centre crop) and normalisation, once."""
    import torch

    from mmfuse.extract.image import ImageFiles

    files = ImageFiles(paths, prep["resize"], prep["crop"], True)
    x = torch.stack([files[i][1] for i in range(len(files))]).float().div_(255)
    mean, std = torch.tensor(prep["mean"]).view(1, 3, 1, 1), torch.tensor(prep["std"]).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).numpy()


def image_batches(x: np.ndarray, batch: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x), batch)]


# --- the towers as graphs -----------------------------------------------------------------------------------
def text_module(model):
    """minilm with mmfuse's pooling inside: (input_ids, attention_mask, token_type_ids) -> (cls, mean)."""
    from torch import nn

    from mmfuse.extract.text import pool_text

    class TextTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.model(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).last_hidden_state.float()
            return pool_text(h, attention_mask)

    return TextTower().eval()


def image_module(features):
    """efficientnet-lite0's feature extractor: (B, 3, 224, 224) -> pooled (B, 1280)."""
    from torch import nn

    class ImageTower(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features

        def forward(self, x):
            return self.features(x)["pooled"].flatten(1)

    return ImageTower().eval()


def export_onnx(module, example: tuple, names: tuple[str, ...], outputs: tuple[str, ...], dynamic: dict,
                path: Path) -> Path:
    import torch

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=list(names),
                          output_names=list(outputs), dynamic_axes=dynamic, opset_version=17)
    return path


def ort_int8(fp32: Path, calib: list[dict], out: Path, weight_matmuls_only: bool) -> tuple[Path, list | None]:
    """quantize_static: QDQ, per-channel int8 weights, uint8 activations (U8S8: the fast form on x86, as ORT's docs
    say; S8S8 measured at the same cosine and half the speed), MinMax ranges as a moving average over ``calib``;
    ``weight_matmuls_only``: only the MatMuls with a weight (the transformer's linear layers), the rest fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            return next(self.items, None)

    pre = out.with_suffix(".pre.onnx")
    try:  # shape inference and graph clean-up, as ORT's docs ask
        quant_pre_process(str(fp32), str(pre))
    except Exception:  # noqa: BLE001 - the text graph's symbolic shapes: ONNX's own shape inference then
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    nodes = None
    if weight_matmuls_only:
        graph = onnx.load(str(pre)).graph
        weights = {i.name for i in graph.initializer}
        nodes = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                    extra_options={"CalibMaxIntermediateOutputs": 64, "CalibMovingAverage": True})
    return out, nodes


def ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = os.cpu_count() or 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ov_kernels(compiled) -> collections.Counter:
    """primitive type -> nodes of a compiled OpenVINO model (after an inference: dynamic nodes are decided then)."""
    cnt = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer, prim = rt["layerType"].astype(str), rt["primitiveType"].astype(str)
        if layer in ("FullyConnected", "MatMul", "Convolution", "Eltwise", "MVN", "Softmax", "ScaledDotProductAttention"):
            cnt[prim] += 1
    return cnt


def ov_isa(kernels: collections.Counter) -> str:
    """The kernels' ISA by their names ('avx512' / 'avx2'), and under the AVX2 cap how many are MLAS (OpenVINO's
    bundled MLAS sgemm dispatches on CPUID: no environment variable caps it)."""
    names = " ".join(kernels)
    isa = "AVX-512 kernels" if "avx512" in names else ("AVX2 kernels" if "avx2" in names else "kernels ?")
    mlas = sum(n for k, n in kernels.items() if "mlas" in k)
    return isa + (f"; {mlas} MLAS FullyConnected nodes not capped (CPUID)" if mlas and restricted() else "")


# --- runners: fn(batch) -> tuple of (B, D) float32 arrays ----------------------------------------------------
def torch_runner(fn, precision: str):
    import torch

    from mmfuse.precision import autocast

    def run(batch):
        with torch.inference_mode(), autocast("cpu", precision):
            out = fn(batch)
        out = out if isinstance(out, tuple) else (out["pooled"].flatten(1),) if isinstance(out, dict) else (out,)
        return tuple(o.float().numpy() for o in out)

    return run


def ov_runner(compiled):
    request = compiled.create_infer_request()
    outs = compiled.outputs

    def run(batch):
        res = request.infer(batch if isinstance(batch, dict) else {0: batch})
        return tuple(np.array(res[o], dtype=np.float32) for o in outs)

    return run


def ort_runner(session):
    names = [i.name for i in session.get_inputs()]

    def run(batch):
        feed = {k: batch[k] for k in names} if isinstance(batch, dict) else {names[0]: batch}
        return tuple(np.asarray(o, dtype=np.float32) for o in session.run(None, feed))

    return run


def run_all(run, batches) -> list[np.ndarray]:
    parts = [run(b) for b in batches]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


# --- building every configuration ---------------------------------------------------------------------------
def build(tower: str, module, torch_fp32: dict, torch_bf16, example, calib: list, folder: Path, log) -> dict:
    """name -> (runner, note): torch fp32 (``torch_fp32``: name -> fn(batch)) and bf16 autocast (``torch_bf16``,
    None where bf16 is not native), OpenVINO fp32/int8 (and bf16, int8 + bf16 where native), ONNX Runtime
    fp32/int8."""
    import nncf
    import openvino as ov

    core, text, bf16 = ov.Core(), tower == "text", torch_bf16 is not None
    configs = {name: (torch_runner(fn, "fp32"), "") for name, fn in torch_fp32.items()}
    if bf16:
        configs[DEFAULT_BF16] = (torch_runner(torch_bf16, "bf16"), "")
    log(f"{tower}: OpenVINO convert_model")
    ov_model = ov.convert_model(module, example_input=example)
    log(f"{tower}: NNCF quantize ({len(calib)} samples)")
    # text: the transformer preset (SmoothQuant, mixed); images: the mixed preset (asymmetric activations: the
    # ReLU6 outputs are non-negative) with full bias correction, the best cosine of the presets tried
    options = dict(model_type=nncf.ModelType.TRANSFORMER) if text else \
        dict(preset=nncf.QuantizationPreset.MIXED, fast_bias_correction=False)
    q_model, t_q = timed(lambda: nncf.quantize(ov_model, nncf.Dataset(calib), subset_size=len(calib), **options))
    variants = [("fp32", ov_model, "f32"), ("int8", q_model, "f32")]
    if bf16:
        variants += [("bf16 (its default here)", ov_model, "bf16"), ("int8 + bf16 (its default here)", q_model, "bf16")]
    for name, m, hint in variants:
        compiled = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": hint})
        run = ov_runner(compiled)
        run(calib[0])  # dynamic nodes choose their kernels at the first inference
        note = ov_isa(ov_kernels(compiled)) + (f"; NNCF quantize {t_q:.0f} s" if "int8" in name else "")
        configs[f"OpenVINO {name}"] = (run, note)
    log(f"{tower}: ONNX export + quantize_static")
    names, outputs = (TEXT_INPUTS, ("cls", "mean")) if text else (("x",), ("pooled",))
    dynamic = {k: {0: "b", 1: "t"} for k in TEXT_INPUTS} if text else {"x": {0: "b"}}
    args = tuple(example[k] for k in TEXT_INPUTS) if text else (example,)
    fp32 = export_onnx(module, args, names, outputs, dynamic, folder / f"{tower}.onnx")
    ort_calib = [c if text else {"x": c} for c in calib]
    (int8, nodes), t_q = timed(lambda: ort_int8(fp32, ort_calib, folder / f"{tower}.int8.onnx", text))
    unc = "**not capped**: MLAS dispatches on CPUID (AVX-512 kernels)" if restricted() else ""
    configs["ONNX Runtime fp32"] = (ort_runner(ort_session(fp32)), unc)
    note = f"quantize_static {t_q:.0f} s" + (f"; the {len(nodes)} linear layers' MatMuls only" if nodes else "")
    configs["ONNX Runtime int8 (static QDQ)"] = (ort_runner(ort_session(int8)), "; ".join(filter(None, [unc, note])))
    return configs


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (user, nice, system, irq, softirq, steal), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure(fn) -> tuple[float, float]:
    """(wall seconds of fn(), cores the other processes kept busy meanwhile: machine busy time - ours, / wall)."""
    busy, own = busy_seconds(), own_seconds()
    _, t = timed(fn)
    return t, max(0.0, (busy_seconds() - busy) - (own_seconds() - own)) / t


def timed_rounds(jobs: dict, items: int, repeats: int, label: str, clean: float = 0.1) -> dict:
    """name -> (median items/s, the kept rates, the others' cores in them): rounds over every job in turn (waiting
    for a load average <= 1.5 before each), until each job has ``repeats`` passes during which the other processes
    used < ``clean`` cores; at most 3 * ``repeats`` rounds, after which a job keeps its least disturbed passes."""
    passes = {name: [] for name in jobs}  # (items/s, others' cores)
    for r in range(3 * repeats):
        todo = [n for n, p in passes.items() if sum(o < clean for _, o in p) < repeats]
        if not todo:
            break
        print(f"  {label} round {r + 1} (load {wait_for_quiet():.2f}): {len(todo)} of {len(jobs)} to time", flush=True)
        for name in todo:
            t, others = measure(jobs[name])
            passes[name].append((items / t, others))
    out = {}
    for name, p in passes.items():
        kept = sorted(p, key=lambda x: x[1])[:repeats]  # the clean passes (the least disturbed ones)
        out[name] = (float(np.median([r for r, _ in kept])), [r for r, _ in kept], max(o for _, o in kept))
    return out


def time_configs(configs: dict, batches: list, items: int, repeats: int, tower: str) -> dict:
    """timed_rounds over the configurations, each pass running every batch, after a warm-up pass."""
    for run, _ in configs.values():
        run(batches[0]), run(batches[-1])
    return timed_rounds({name: (lambda run=run: [run(b) for b in batches]) for name, (run, _) in configs.items()},
                        items, repeats, tower)


# --- downstream ---------------------------------------------------------------------------------------------
def downstream(features: dict, y: np.ndarray, label_names, folds: int, log) -> dict:
    """runtime -> {head: per-fold macro-F1} on the same stratified folds."""
    from mmfuse.heads import FeatureSet, Head, HeadConfig
    from mmfuse.metrics import macro_f1
    from mmfuse.splits import make_folds, splits

    heads = {"concat": HeadConfig(fusion="concat", text_feature="mean", epochs=20, precision="fp32"),
             "logreg": HeadConfig(fusion="logreg", text_feature="mean")}
    parts = splits(make_folds(y, folds, seed=0))
    scores = {}
    for name, (text, image) in features.items():
        X = FeatureSet(text, image, y, [str(i) for i in range(len(y))], tuple(label_names),
                       text_feature="mean", image_feature="pooled")
        scores[name] = {h: [macro_f1(y[te], Head(cfg).fit(X.subset(tr)).predict(X.subset(te)), len(label_names))
                            for tr, te in parts] for h, cfg in heads.items()}
        log(f"downstream {name}: " + ", ".join(f"{h} {np.mean(v):.4f}" for h, v in scores[name].items()))
    return scores


# --- main ---------------------------------------------------------------------------------------------------
def rows_of(data: str, calibration: int, count: int):
    """(calibration records, evaluated records, label names, y): a seeded permutation of the labelled rows."""
    from mmfuse.data import read_course

    records = [r for r in read_course(data, "train").records if not r.error and r.labels]
    perm = np.random.default_rng(0).permutation(len(records))
    calib = [records[i] for i in perm[:calibration]]
    rows = [records[i] for i in perm[calibration:calibration + count]]
    labels = sorted({r.labels[0] for r in rows})
    return calib, rows, labels, np.array([labels.index(r.labels[0]) for r in rows])


def text_tower(rows, calib, folder, bf16, args, log):
    import torch

    from mmfuse.extract.text import TextExtractorConfig, load_text_encoder

    tokenizer, model, _ = load_text_encoder(TextExtractorConfig("minilm"))
    module = text_module(model)
    fn = lambda b: module(**{k: torch.from_numpy(v) for k, v in b.items()})  # noqa: E731
    batches, order = text_batches(tokenizer, [r.text for r in rows], TEXT_BATCH)
    calib_items = [text_batches(tokenizer, [r.text], 1)[0][0] for r in calib]
    example = {k: torch.from_numpy(v) for k, v in batches[0].items()}
    configs = build("text", module, {REF: fn}, fn if bf16 else None, example, calib_items, folder, log)
    n = min(args.texts, len(rows))
    rates = time_configs(configs, text_batches(tokenizer, [r.text for r in rows[:n]], TEXT_BATCH)[0], n,
                         args.repeats, "text")
    inverse = np.argsort(order)
    vectors = {name: [v[inverse] for v in run_all(run, batches)] for name, (run, _) in configs.items()}
    return configs, rates, vectors, n


def image_tower(rows, calib, folder, bf16, args, log):
    import torch

    from mmfuse.extract.image import ImageExtractorConfig, image_runtime, load_image_encoder

    cfg = ImageExtractorConfig("efficientnet-lite0")
    features, prep, _ = load_image_encoder(cfg)
    log(f"decoding {len(rows)} + {len(calib)} images")
    x = image_arrays([r.image_path for r in rows], prep)
    calib_items = list(image_arrays([r.image_path for r in calib], prep)[:, None])  # (1, 3, H, W) each
    example = torch.from_numpy(x[:IMAGE_BATCH].copy())
    cpu = torch.device("cpu")
    eager = image_runtime(features, example, replace(cfg, optimize=False), cpu, "fp32")  # channels_last
    traced = image_runtime(features, example, cfg, cpu, "fp32")  # TorchScript optimize_for_inference, verified
    fp32 = {REF: lambda b: eager(torch.from_numpy(b)),  # mmfuse's fp32 below 512 images
            "torch fp32 TorchScript (mmfuse's fp32 from 512 images)": lambda b: traced(torch.from_numpy(b))}
    configs = build("image", image_module(features), fp32, (lambda b: eager(torch.from_numpy(b))) if bf16 else None,
                    example, calib_items, folder, log)
    n = min(args.images, len(rows))
    rates = time_configs(configs, image_batches(x[:n], IMAGE_BATCH), n, args.repeats, "image")
    vectors = {name: run_all(run, image_batches(x, IMAGE_BATCH)) for name, (run, _) in configs.items()}
    return configs, rates, vectors, n, (features, prep, cfg)


def end_to_end(configs, image, paths, default, repeats) -> dict:
    """Decode + model: mmfuse's encode_images (fp32 and the default) against the same decode (mmfuse's
    ImageFiles in the main process, as mmfuse on 2 cores) feeding each other runtime."""
    import torch

    from mmfuse.extract.image import ImageFiles, encode_images, optimize_pays

    features, prep, cfg = image
    cfg = replace(cfg, optimize=optimize_pays(len(paths)))  # as mmfuse.extract decides for this many images
    mean, std = torch.tensor(prep["mean"]).view(1, 3, 1, 1), torch.tensor(prep["std"]).view(1, 3, 1, 1)

    def mmfuse(precision):
        return [f for _, f, _ in encode_images(paths, features, prep, cfg, torch.device("cpu"), precision)]

    def other(run):
        loader = torch.utils.data.DataLoader(ImageFiles(paths, prep["resize"], prep["crop"], True),
                                             batch_size=IMAGE_BATCH, num_workers=0)
        return [run(x.float().div_(255).sub_(mean).div_(std).numpy()) for _, x, _ in loader]

    jobs = {"mmfuse encode_images fp32": lambda: mmfuse("fp32")}
    if default != "fp32":
        jobs[f"mmfuse encode_images {default} (mmfuse's default here)"] = lambda: mmfuse(default)
    jobs.update({f"{name}, the same decode": (lambda run=run: other(run)) for name, (run, _) in configs.items()
                 if not name.startswith("torch")})
    return timed_rounds(jobs, len(paths), repeats, "end to end")


def tower_table(tower, configs, rates, vectors, n, rows, repeats) -> list[str]:
    """Print the tower's table; return the configurations that qualify (>= 1.5x mmfuse's default torch path,
    cosine mean >= 0.999 on every vector)."""
    unit = "texts/s" if tower == "text" else "img/s"
    ref = vectors[REF]
    fp32 = max(rates[k][0] for k in configs if k.startswith("torch fp32"))
    default = rates[DEFAULT_BF16][0] if DEFAULT_BF16 in rates else fp32
    feats = ("text/cls", "text/mean") if tower == "text" else ("image/pooled",)
    print(f"{tower} ({'minilm, batches of 64' if tower == 'text' else 'efficientnet-lite0, batches of 8'}; "
          f"{n} items timed, median of {repeats} passes (each pass's rate in brackets); others' cores: the most CPU "
          f"other processes used during a kept pass; cosine over {len(rows)} rows)\n")
    print(f"| runtime | {unit} | vs torch fp32 | vs mmfuse default | "
          + " | ".join(f"cosine {f} mean (min)" for f in feats) + " | others' cores | kernels / note |")
    print("|---|---:|---:|---:|" + "---:|" * len(feats) + "---:|---|")
    qualify = []
    for name, (_, note) in configs.items():
        rate, every, others = rates[name]
        cos = [cosine(a.astype(np.float64), b.astype(np.float64)) for a, b in zip(ref, vectors[name])]
        if rate / default >= 1.5 and min(c.mean() for c in cos) >= 0.999:
            qualify.append(name)
        print(f"| {name} | {rate:.1f} ({', '.join(f'{r:.0f}' for r in every)}) | {rate / fp32:.2f}x | "
              f"{rate / default:.2f}x | " + " | ".join(f"{c.mean():.5f} ({c.min():.4f})" for c in cos) + f" | {others:.2f} | {note} |")
    print(f"\n{tower}: qualifying (>= 1.5x the default torch path at cosine mean >= 0.999): "
          f"{', '.join(qualify) or 'none'}\n")
    return qualify


def downstream_table(results, y, labels, folds, log) -> None:
    feats = {name: (results["text"][2][name][1], results["image"][2][name][0]) for name in results["text"][0]
             if name in results["image"][0]}
    scores = downstream(feats, y, labels, folds, log)
    ref = scores[REF]
    print(f"\ndownstream: {len(y)} rows, text/mean + image/pooled of each runtime (both towers; images: torch's "
          f"eager fp32 as the reference), {folds} stratified folds (the same for all), macro-F1\n")
    print("| runtime | head | macro-F1 | paired diff vs torch fp32 | SE of diff | torch fp32's SE | within 1 SE |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, s in scores.items():
        for head, v in s.items():
            a, b = np.array(ref[head]), np.array(v)
            d = b - a
            se_d, se_a = d.std(ddof=1) / np.sqrt(len(d)), a.std(ddof=1) / np.sqrt(len(a))
            print(f"| {name} | {head} | {b.mean():.4f} | {d.mean():+.4f} | {se_d:.4f} | {se_a:.4f} | "
                  f"{'yes' if abs(d.mean()) <= se_a else 'no'} |")


def main() -> int:
    ap = parser(__doc__)
    add_data(ap)
    ap.add_argument("--texts", type=int, default=640, help="texts timed per configuration")
    ap.add_argument("--images", type=int, default=320, help="images timed per configuration")
    ap.add_argument("--calibration", type=int, default=300, help="calibration rows (not evaluated)")
    ap.add_argument("--rows", type=int, default=800, help="evaluated rows: fidelity and downstream")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--isa", default="native", choices=("native", "avx2"),
                    help="avx2: re-run under " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()))
    ap.add_argument("--no-downstream", action="store_true", help="skip the heads")
    ap.add_argument("--max-wait", type=int, default=300, help="seconds to wait for a load average <= 1.5 per round")
    args = ap.parse_args()
    MAX_WAIT[0] = args.max_wait
    if args.isa == "avx2" and not restricted():
        return subprocess.call([sys.executable, __file__, *sys.argv[1:]], env={**os.environ, **AVX2_ENV})
    if not (Path(args.data) / "train.txt").is_file():
        print(f"skip: data set not found at {args.data}")
        return 0
    missing = [m for m in ("openvino", "nncf", "onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"skip: {', '.join(missing)} not installed (pip install openvino nncf onnxruntime onnx)")
        return 0
    import nncf
    import onnxruntime as ort
    import openvino as ov
    import torch

    from mmfuse.precision import choose_precision, native_bf16

    t0 = time.perf_counter()

    def log(s):
        print(f"[{time.perf_counter() - t0:6.0f} s] {s}", flush=True)

    bf16, default = native_bf16(), choose_precision("auto", torch.device("cpu"))
    calib, rows, labels, y = rows_of(args.data, args.calibration, args.rows)
    folder = Path(tempfile.mkdtemp(prefix="cpu-runtimes-"))
    loads = [os.getloadavg()[0]]
    results = {"text": text_tower(rows, calib, folder, bf16, args, log)}
    log("text done")
    *image, decoder = image_tower(rows, calib, folder, bf16, args, log)
    results["image"] = tuple(image)
    log("images done")
    e2e = end_to_end(results["image"][0], decoder, [r.image_path for r in rows[:results["image"][3]]], default,
                     args.repeats)
    loads.append(os.getloadavg()[0])

    print(f"\n{cpu_line()}; torch {torch.__version__} ({torch.get_num_threads()} threads), OpenVINO "
          f"{ov.get_version().split('-')[0]}, NNCF {nncf.__version__}, ONNX Runtime {ort.__version__}; mmfuse's "
          f"default precision here: {default}")
    print(f"mvsa train: {len(calib)} calibration rows, {len(rows)} evaluated rows (disjoint); 1-minute load "
          f"average at the start of each timed round: {', '.join(f'{v:.2f}' for v in LOADS)}; at the end "
          f"{loads[1]:.2f}\n")
    qualify = {tower: tower_table(tower, *res[:4], rows, args.repeats) for tower, res in results.items()}
    fp32 = e2e["mmfuse encode_images fp32"][0]
    print(f"images end to end (decode + model, {results['image'][3]} images, median of {args.repeats} passes)\n")
    print("| what | img/s | vs mmfuse fp32 | others' cores |\n|---|---:|---:|---:|")
    for k, (v, _, others) in e2e.items():
        print(f"| {k} | {v:.1f} | {v / fp32:.2f}x | {others:.2f} |")
    print()
    if not args.no_downstream:
        downstream_table(results, y, labels, args.folds, log)
    print("\nqualifying: " + "; ".join(f"{t}: {', '.join(q) or 'none'}" for t, q in qualify.items()))
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
