package onnx

import (
	"math"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"ortalign/onnx/onnxpb"
)

func TestHalfConversionsMatchNumpy(t *testing.T) {
	exp := loadExpected(t)
	nbf := 0
	for _, c := range exp.HalfCases {
		f := math.Float32frombits(c.F32Bits)
		if got := Float32ToFloat16(f); got != c.F16Bits {
			t.Errorf("Float32ToFloat16(%g) = %#04x, numpy %#04x", f, got, c.F16Bits)
		}
		if c.BF16Bits != nil {
			nbf++
			if got := Float32ToBFloat16(f); got != *c.BF16Bits {
				t.Errorf("Float32ToBFloat16(%g) = %#04x, torch %#04x", f, got, *c.BF16Bits)
			}
		}
	}
	if nbf == 0 {
		t.Log("expected.json has no bfloat16 cases (torch was missing when it was generated)")
	}
}

func TestHalfRoundTripAllBitPatterns(t *testing.T) {
	for h := range 1 << 16 {
		f := Float16ToFloat32(uint16(h))
		if f != f { // NaN
			if back := Float32ToFloat16(f); back&0x7c00 != 0x7c00 || back&0x3ff == 0 {
				t.Fatalf("NaN %#04x came back as %#04x", h, back)
			}
			continue
		}
		if back := Float32ToFloat16(f); back != uint16(h) {
			t.Fatalf("half %#04x -> %g -> %#04x", h, f, back)
		}
		bf := BFloat16ToFloat32(uint16(h))
		if bf == bf {
			if back := Float32ToBFloat16(bf); back != uint16(h) {
				t.Fatalf("bfloat16 %#04x -> %g -> %#04x", h, bf, back)
			}
		}
	}
	cases := map[uint16]float32{0x3c00: 1, 0xc000: -2, 0x7bff: 65504, 0x0001: 5.9604645e-08, 0x0400: 6.1035156e-05, 0x3555: 0.33325195}
	for h, want := range cases {
		if got := Float16ToFloat32(h); got != want {
			t.Errorf("Float16ToFloat32(%#04x) = %g, want %g", h, got, want)
		}
	}
	if !math.IsInf(float64(Float16ToFloat32(0xfc00)), -1) {
		t.Error("0xfc00 is not -Inf")
	}
}

func TestTensorReaders(t *testing.T) {
	f := []float32{1.5, -2, 0, float32(math.Inf(1)), 3.25, -0.125}
	tests := []struct {
		name    string
		tensor  *onnxpb.TensorProto
		floats  []float32
		int64s  []int64
		doubles []float64
	}{
		{"float raw", FloatTensor("a", []int64{2, 3}, f), f, nil, nil},
		{"float typed", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float)), Dims: []int64{6}, FloatData: f}, f, nil, nil},
		{"scalar", ScalarFloat("s", 7), []float32{7}, nil, []float64{7}},
		{"double raw", DoubleTensor("d", []int64{2}, []float64{0.1, 1e300}), nil, nil, []float64{0.1, 1e300}},
		{"double typed", &onnxpb.TensorProto{DataType: proto.Int32(int32(Double)), Dims: []int64{2}, DoubleData: []float64{0.1, -3}}, nil, nil, []float64{0.1, -3}},
		{"int64 raw", Int64Tensor("i", []int64{3}, []int64{-1, 0, math.MaxInt64}), nil, []int64{-1, 0, math.MaxInt64}, nil},
		{"int64 typed", &onnxpb.TensorProto{DataType: proto.Int32(int32(Int64)), Dims: []int64{2}, Int64Data: []int64{5, -6}}, nil, []int64{5, -6}, nil},
		{"int32 raw", Int32Tensor("i32", []int64{2}, []int32{-7, 8}), nil, []int64{-7, 8}, nil},
		{"int8 raw", &onnxpb.TensorProto{DataType: proto.Int32(int32(Int8)), Dims: []int64{2}, RawData: []byte{0xff, 0x7f}}, nil, []int64{-1, 127}, nil},
		{"uint8 typed", &onnxpb.TensorProto{DataType: proto.Int32(int32(UInt8)), Dims: []int64{2}, Int32Data: []int32{200, 1}}, nil, []int64{200, 1}, nil},
		{"uint32 raw", &onnxpb.TensorProto{DataType: proto.Int32(int32(UInt32)), Dims: []int64{1}, RawData: []byte{0xff, 0xff, 0xff, 0xff}}, nil, []int64{math.MaxUint32}, nil},
		{"bool raw", BoolTensor("b", []int64{2}, []bool{true, false}), nil, []int64{1, 0}, nil},
		{"float16 raw", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float16)), Dims: []int64{2}, RawData: []byte{0x00, 0x3c, 0x00, 0xc0}}, []float32{1, -2}, nil, []float64{1, -2}},
		{"float16 typed", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float16)), Dims: []int64{2}, Int32Data: []int32{0x3c00, 0xc000}}, []float32{1, -2}, nil, []float64{1, -2}},
		{"bfloat16 raw", &onnxpb.TensorProto{DataType: proto.Int32(int32(BFloat16)), Dims: []int64{1}, RawData: []byte{0x80, 0x3f}}, []float32{1}, nil, []float64{1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TensorFloats(tc.tensor)
			if (err == nil) != (tc.floats != nil) {
				t.Errorf("TensorFloats err = %v", err)
			} else if tc.floats != nil && !slices.Equal(got, tc.floats) {
				t.Errorf("TensorFloats = %v, want %v", got, tc.floats)
			}
			gi, err := TensorInt64s(tc.tensor)
			if (err == nil) != (tc.int64s != nil) {
				t.Errorf("TensorInt64s err = %v", err)
			} else if tc.int64s != nil && !slices.Equal(gi, tc.int64s) {
				t.Errorf("TensorInt64s = %v, want %v", gi, tc.int64s)
			}
			if tc.doubles != nil {
				gd, err := TensorDoubles(tc.tensor)
				if err != nil || !slices.Equal(gd, tc.doubles) {
					t.Errorf("TensorDoubles = %v, %v, want %v", gd, err, tc.doubles)
				}
			}
		})
	}
}

func TestTensorReaderErrors(t *testing.T) {
	tests := []struct {
		name    string
		tensor  *onnxpb.TensorProto
		wantErr string
	}{
		{"short raw", &onnxpb.TensorProto{Name: proto.String("w"), DataType: proto.Int32(int32(Float)), Dims: []int64{3}, RawData: make([]byte, 8)}, `tensor "w": raw_data has 8 bytes, want 12`},
		{"wrong count", FloatTensor("w", []int64{2, 2}, []float32{1, 2, 3}), "want 16"},
		{"typed count", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float)), Dims: []int64{3}, FloatData: []float32{1}}, "float_data has 1 values, want 3"},
		{"negative dim", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float)), Dims: []int64{-1}}, "negative"},
		{"overflow", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float)), Dims: []int64{1 << 40, 1 << 40}}, "overflow"},
		{"wrong type", Int64Tensor("i", nil, []int64{1}), "cannot read INT64 as float32"},
		{"string", &onnxpb.TensorProto{DataType: proto.Int32(int32(String)), StringData: [][]byte{[]byte("x")}}, "STRING"},
		{"unloaded external", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float)), DataLocation: onnxpb.TensorProto_EXTERNAL.Enum()}, "external"},
		{"nil", nil, "nil tensor"},
		{"huge dims, no data", &onnxpb.TensorProto{DataType: proto.Int32(int32(Float16)), Dims: []int64{1 << 40}}, "int32_data has 0 values"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TensorFloats(tc.tensor)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("err = %v, want it to contain %q", err, tc.wantErr)
			}
			if _, err := TensorInt64s(tc.tensor); err == nil && tc.name != "wrong type" {
				t.Error("TensorInt64s succeeded")
			}
		})
	}
}

func TestSetTensor(t *testing.T) {
	tt := &onnxpb.TensorProto{Name: proto.String("w"), DataType: proto.Int32(int32(Float)), Dims: []int64{2}, FloatData: []float32{1, 2}}
	if err := SetTensorFloats(tt, []float32{3, 4}); err != nil {
		t.Fatal(err)
	}
	if tt.FloatData != nil || len(tt.RawData) != 8 {
		t.Errorf("after SetTensorFloats: float_data %v, raw %d bytes", tt.FloatData, len(tt.RawData))
	}
	if got, _ := TensorFloats(tt); !slices.Equal(got, []float32{3, 4}) {
		t.Errorf("read back %v", got)
	}
	if err := SetTensorFloats(tt, []float32{1}); err == nil || !strings.Contains(err.Error(), `tensor "w"`) {
		t.Errorf("wrong count: err = %v", err)
	}
	if err := SetTensorInt64s(tt, []int64{1, 2}); err == nil {
		t.Error("SetTensorInt64s on a FLOAT tensor succeeded")
	}

	h := &onnxpb.TensorProto{DataType: proto.Int32(int32(Float16)), Dims: []int64{3}}
	if err := SetTensorFloats(h, []float32{1, -2, 0.1}); err != nil {
		t.Fatal(err)
	}
	if got, _ := TensorFloats(h); !slices.Equal(got, []float32{1, -2, Float16ToFloat32(Float32ToFloat16(0.1))}) {
		t.Errorf("float16 read back %v", got)
	}

	i := Int64Tensor("i", []int64{2}, []int64{0, 0})
	if err := SetTensorInt64s(i, []int64{9, -9}); err != nil {
		t.Fatal(err)
	}
	if got, _ := TensorInt64s(i); !slices.Equal(got, []int64{9, -9}) {
		t.Errorf("int64 read back %v", got)
	}
	d := DoubleTensor("d", nil, []float64{0})
	if err := SetTensorDoubles(d, []float64{2.5}); err != nil {
		t.Fatal(err)
	}
	if got, _ := TensorDoubles(d); !slices.Equal(got, []float64{2.5}) {
		t.Errorf("double read back %v", got)
	}
}

func TestNumElementsAndNames(t *testing.T) {
	tests := []struct {
		dims []int64
		want int64
		ok   bool
	}{
		{nil, 1, true},
		{[]int64{3, 4}, 12, true},
		{[]int64{3, 0, 5}, 0, true},
		{[]int64{2, -1}, 0, false},
		{[]int64{math.MaxInt64, 2}, 0, false},
	}
	for _, tc := range tests {
		got, err := NumElements(&onnxpb.TensorProto{Dims: tc.dims})
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("NumElements(%v) = %d, %v", tc.dims, got, err)
		}
	}
	if DataTypeName(1) != "FLOAT" || DataTypeName(16) != "BFLOAT16" || DataTypeName(99) != "DataType(99)" {
		t.Errorf("DataTypeName: %s %s %s", DataTypeName(1), DataTypeName(16), DataTypeName(99))
	}
	if n, _ := Int4.RawSize(3); n != 2 {
		t.Errorf("Int4.RawSize(3) = %d, want 2", n)
	}
	if _, err := String.RawSize(1); err == nil {
		t.Error("String.RawSize succeeded")
	}
}
