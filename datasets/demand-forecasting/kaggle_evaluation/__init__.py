"""The demand-forecasting competition's evaluation API (an inference server + a gateway over gRPC).

Written for kops' bundled emulator competition with the same public entry points as the ``kaggle_evaluation``
package Kaggle's code competitions ship: ``demand_inference_server.DemandInferenceServer(predict)`` with
``serve()`` and ``run_local_gateway(data_paths)``; the gateway writes ``submission.parquet`` (and, on the rerun,
``result.json``).
"""
