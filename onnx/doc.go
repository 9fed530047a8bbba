// Package onnx owns the ONNX model in memory for ortalign: loading and saving
// models (with external data, atomically, keeping the layout a model came
// with), reading and writing tensor data, editing graphs, and building new
// nodes with a small builder that picks the right operator form for the
// model's opset.
//
// The protobuf types live in the sub-package onnxpb, generated from the
// project's own schema; fields that schema does not describe survive a
// load/save round trip unchanged.
//
// A typical use:
//
//	m, err := onnx.Load("model.onnx")
//	if err != nil { ... }
//	b := onnx.NewBuilder(m.Graph(), m.Opset(""), "loss")
//	lp := b.LogSoftmax("logits", -1)
//	...
//	err = m.Save("out/model.onnx", onnx.SaveOptions{})
//
// Supported opsets: the Builder emits operators for default-domain opsets
// 13 through 21 (tested), choosing between the attribute and input forms of
// axes and splits by version; older opsets get the attribute forms.
package onnx
