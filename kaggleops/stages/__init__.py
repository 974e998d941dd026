"""The loop stages (train, rerank, publish, kernel render/push, submit + scores, sync), each over the adapters."""
