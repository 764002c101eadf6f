"""Post-training quantisation and structured pruning on conversion's IR.

    from conversion.onnx_import import from_onnx
    from quantization.calibration import calibration_set
    from quantization.quantize import quantize_model, write_tflite
    from quantization.prune import prune_graph, write_pruned_onnx

    g = from_onnx("sr-x2.onnx")
    calib = calibration_set(None, task="sr", scale=2)      # or a folder of images
    res = quantize_model(g, calib, method="percentile")     # GPTQ weights, residual on the pixel grid
    write_tflite(res.graph, "sr-x2.int8.tflite")            # full-integer int8 (16x8 layers if asked)
    print("\\n".join(res.report.lines()))                    # variants, per-layer SQNR, sensitivity

    pruned = prune_graph(g, calib, 0.7)                     # 70% of the conv MACs, LS-refitted
    write_pruned_onnx("sr-x2.onnx", pruned.graph, "sr-x2.pruned70.onnx")

Modules: ``calibration`` (data, observers), ``quantize`` (PTQ, CLE, bias correction, GPTQ,
sensitivity, mixed 16x8), ``tflite16`` (int64 biases for 16x8 until the writer has them),
``prune`` (channel pruning, LS reconstruction, magnitude sparsity), ``cli`` / ``prune_cli`` (the
``edge-enhance quantize`` / ``prune`` commands), and measuring tools ``table``, ``prune_curve``,
``timing`` (run by hand, never by the tests).
"""
