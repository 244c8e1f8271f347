module finetune-operator/hack/cluster/heartbeat

go 1.26.0
