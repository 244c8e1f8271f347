"""The finetune-operator controller: thin kopf handlers over a pure decision core."""
