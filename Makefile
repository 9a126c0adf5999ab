# mmfuse: `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?=
TEXT_MODEL ?= bert-base-uncased
IMAGE_MODEL ?= resnet50
FEATURES ?= features
MVSA ?= ../shared/datasets/mvsa
DEMO ?= demo
ROWS ?= 10000,100000,1000000
OFFLINE := --text-model minilm --image-model efficientnet-lite0
HEADS = $(shell $(BIN)/python -c "from mmfuse.heads import list_heads; print(*list_heads(trained=True))")  # every head that
# learns (zeroshot needs a two-tower cache with class prompts: the demo's offline backbones have none)

.DEFAULT_GOAL := help
.PHONY: help install test demo extract bench-extract bench-heads bench-grid bench-cache bench-refit bench-defaults bench-finetune bench-multilabel bench-crash bench-selection bench-scale bench-halving bench-e2e bench-backbones bench-precision bench-rows clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[offline,grid,backbones,formats,openvino,onnxruntime,dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install mmfuse, the offline backbones and the test tools

test: install ## run the test suite (tiny local models, no downloads)
	$(BIN)/python -m pytest -q

demo: install ## synthetic data -> offline pretrained features -> every head -> grid + ensemble -> scored predictions -> EDA + HTML report
	$(BIN)/mmfuse demo-data $(DEMO)/data --overwrite
	$(BIN)/mmfuse extract $(DEMO)/data --split train --out $(DEMO)/features/train.h5 $(OFFLINE)
	$(BIN)/mmfuse extract $(DEMO)/data --split test --out $(DEMO)/features/test.h5 $(OFFLINE)
	$(BIN)/mmfuse info $(DEMO)/features/train.h5
	@for f in $(HEADS); do \
	  $(BIN)/mmfuse train-head $(DEMO)/features/train.h5 --fusion $$f --out $(DEMO)/runs/$$f --overwrite > $(DEMO)/runs-$$f.log || exit 1; \
	done; echo "validation metrics of every head (stratified 20% of the demo training split):"
	$(BIN)/mmfuse compare $(addprefix $(DEMO)/runs/,$(HEADS))
	$(BIN)/mmfuse predict $(DEMO)/runs/weighted $(DEMO)/features/test.h5 --out $(DEMO)/predictions.txt
	$(BIN)/mmfuse score $(DEMO)/predictions.txt $(DEMO)/data/test_labels.txt
	$(BIN)/mmfuse grid $(DEMO)/features/train.h5 --folds 3 --out $(DEMO)/grid --no-progress
	@cat $(DEMO)/grid/summary.md
	$(BIN)/mmfuse ensemble $(DEMO)/grid --top 5 --out $(DEMO)/runs/ensemble --overwrite
	$(BIN)/mmfuse predict $(DEMO)/runs/ensemble $(DEMO)/features/test.h5 --out $(DEMO)/predictions-ensemble.txt
	$(BIN)/mmfuse score $(DEMO)/predictions-ensemble.txt $(DEMO)/data/test_labels.txt
	$(BIN)/mmfuse inspect $(DEMO)/data --out $(DEMO)/eda --text-model minilm --no-progress --overwrite > $(DEMO)/eda.log
	$(BIN)/mmfuse report $(DEMO) --out $(DEMO)/report.html --title "mmfuse demo" --overwrite
	@echo "data: $(DEMO)/eda/summary.md; everything on one page: $(DEMO)/report.html"

extract: install ## features of every split of DATA into $(FEATURES)/{split}.h5 (TEXT_MODEL=, IMAGE_MODEL=)
	@test -n "$(DATA)" || { echo "usage: make extract DATA=path/to/folder [TEXT_MODEL=...] [IMAGE_MODEL=...]"; exit 2; }
	@for split in train test; do \
	  file=$$( [ $$split = train ] && echo train.txt || echo test_without_label.txt ); \
	  if [ -f "$(DATA)/$$file" ]; then \
	    $(BIN)/mmfuse extract "$(DATA)" --split $$split --out $(FEATURES)/$$split.h5 \
	      --text-model $(TEXT_MODEL) --image-model $(IMAGE_MODEL) || exit 1; \
	  fi; \
	done

bench-extract: install ## extraction speed vs the naive way on $(MVSA) (skips when absent)
	$(BIN)/python bench/speed/extract.py --data $(MVSA)

bench-e2e: install ## `mmfuse extract` end to end on 801- and 60-row splits of $(MVSA): default (auto) vs fp32
	$(BIN)/python bench/speed/extract_e2e.py --data $(MVSA)

bench-backbones: install ## CLIP, SigLIP, HF and timm image/text paths vs each library's own loop (random weights)
	$(BIN)/python bench/speed/backbones.py --data $(MVSA)

bench-precision: install ## bf16 vs fp32 caches of $(MVSA): vector cosines and the same heads on the same folds
	$(BIN)/python bench/experiments/precision.py --data $(MVSA)

bench-runtimes: install ## OpenVINO and ONNX Runtime (fp32, calibrated int8) vs torch for both towers on $(MVSA), native and AVX2; --image-runtime per image model
	$(BIN)/python -m pip install -q openvino nncf onnxruntime onnx
	$(BIN)/python bench/experiments/cpu_runtimes.py --data $(MVSA)
	$(BIN)/python bench/experiments/cpu_runtimes.py --data $(MVSA) --isa avx2
	$(BIN)/python bench/speed/image_runtimes.py

bench-heads: install ## every head: 20-epoch fit time and 5-fold macro-F1 on $(MVSA) features
	$(BIN)/python bench/speed/heads.py --data $(MVSA) --cache $(FEATURES)/mvsa-train.h5

bench-grid: install ## the default grid and the 180-fit grid with dropout, full vs successive halving, vs a plain loop on $(MVSA) features
	$(BIN)/python bench/speed/grid.py --data $(MVSA) --cache $(FEATURES)/mvsa-train.h5
	$(BIN)/python bench/speed/grid.py --data $(MVSA) --cache $(FEATURES)/mvsa-train.h5 --axis dropout=0,0.2,0.5 --sample 0
	$(BIN)/python bench/experiments/grid_batching.py --cache $(FEATURES)/mvsa-train.h5

bench-cache: install ## bytes the cache writes and reads per MiB of features (goal: at most 2x)
	$(BIN)/python bench/speed/cache_io.py

bench-rows: install ## time and peak memory of train-head, a 12-configuration grid, ensemble and predict on synthetic caches of 10k, 100k and 1M rows (ROWS=)
	$(BIN)/python bench/speed/rows.py --rows $(ROWS)

bench-refit: install ## grid best/ and ensembles as fold models vs a step-matched refit, on held-out $(MVSA) rows
	$(BIN)/python bench/experiments/refit.py --data $(MVSA) --cache $(FEATURES)/mvsa-train.h5

bench-defaults: install ## HeadConfig's defaults vs alternatives as paired per-fold macro-F1 on $(MVSA)
	$(BIN)/python bench/experiments/defaults.py --data $(MVSA) --cache $(FEATURES)/mvsa-train.h5

bench-finetune: install ## seconds per end-to-end fine-tune step vs a head step on cached features ($(MVSA))
	$(BIN)/python bench/speed/finetune.py --data $(MVSA)

bench-crash: install ## what keeping a cache valid under SIGKILL costs: late allocation, SWMR, partial copies, early allocation
	$(BIN)/python bench/speed/crash_safety.py

bench-multilabel: install ## a multi-label CSV built from $(MVSA): every fusion, union late fusion, thresholds (held-out micro-F1)
	$(BIN)/python bench/experiments/multilabel.py --data $(MVSA)

bench-selection: install ## nested CV on $(MVSA): the grid's pick and ensembles vs the default head and tuned logreg
	$(BIN)/python bench/experiments/selection.py --data $(MVSA) --cache $(FEATURES)/mvsa-train.h5

bench-scale: install ## sharded extraction on $(MVSA): one process vs shard processes (+ merge), decode ceiling
	$(BIN)/python bench/speed/scale.py --data $(MVSA)

bench-halving: install ## successive halving over folds replayed in every fold order from a full 180-fit grid on $(MVSA) features
	@if [ -f $(FEATURES)/mvsa-train.h5 ]; then \
	  $(BIN)/mmfuse grid $(FEATURES)/mvsa-train.h5 --dropout 0,0.2,0.5 --search full --out $(FEATURES)/mvsa-grid-full --no-progress \
	    && $(BIN)/python bench/experiments/halving_folds.py $(FEATURES)/mvsa-grid-full; \
	else echo "skip: no $(FEATURES)/mvsa-train.h5 (make bench-heads extracts it from $(MVSA))"; fi

clean: ## remove the demo output and caches (keeps .venv)
	rm -rf $(DEMO) .pytest_cache
