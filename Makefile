# Two commands for a newcomer: `make demo` (a real fine-tune that is preempted and resumes) and `make test`.
.PHONY: test e2e demo crd observability lint clean-cluster

test:  ## set up what is missing (cached), lint, run every test
	hack/test.sh $(ARGS)

e2e:  ## the whole kind e2e suite on a kind cluster built here (hack/kind.sh; needs hack/cluster.sh build, images)
	hack/e2e.sh $(ARGS)

demo:  ## build what is missing (cached), start the local cluster, run the preemption demo
	hack/demo.sh

crd:  ## regenerate the CRD from the pydantic model
	.venv/bin/finetune-crd --write

observability:  ## regenerate the dashboard and alert rules from finetune_observability
	.venv/bin/finetune-observability --write

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

clean-cluster:  ## stop the local cluster and remove what it put on the host
	hack/cluster.sh down
