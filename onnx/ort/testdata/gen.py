"""Writes testdata/addsum.onnx: y = x + b (float32 [N,3]), s = ReduceSum(y) (0-d), used by ort tests."""
import onnx
from onnx import helper, TensorProto, numpy_helper
import numpy as np

b = numpy_helper.from_array(np.array([1.0, 2.0, 3.0], dtype=np.float32), "b")
nodes = [
    helper.make_node("Add", ["x", "b"], ["y"]),
    helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0),
    helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
]
g = helper.make_graph(nodes, "addsum",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
     helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
     helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
     helper.make_tensor_value_info("idsf", TensorProto.FLOAT, ["N"])],
    [b])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
m.ir_version = 8
onnx.checker.check_model(m)
onnx.save(m, "addsum.onnx")
