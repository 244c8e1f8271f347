module finetune-operator/hack/cluster/testbox

go 1.26.0
