// Package onnxpb holds the Go types of ortalign's own ONNX protobuf schema
// (onnx.proto in this directory): ModelProto, GraphProto, NodeProto,
// TensorProto and the messages they use.
//
// The schema is written for this project from the field numbers of the ONNX
// IR specification; its proto package is ortalign.onnxpb, so it cannot clash
// with another copy of ONNX's schema linked into the same binary. Fields it
// does not describe are kept as unknown fields and written back unchanged.
//
// Most code should use package ortalign/onnx, which loads and saves models
// (including external data) and edits graphs on top of these types.
package onnxpb

//go:generate protoc --proto_path=../.. --go_out=../.. --go_opt=paths=source_relative onnx/onnxpb/onnx.proto
