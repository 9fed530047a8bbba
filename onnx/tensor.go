package onnx

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"ortalign/internal/hugepages"
	"ortalign/onnx/onnxpb"
)

// DataType is an ONNX tensor element type (the values of TensorProto.DataType).
// TensorProto.data_type and TypeProto.Tensor.elem_type hold it as an int32.
type DataType int32

// The ONNX element types.
const (
	Undefined      DataType = DataType(onnxpb.TensorProto_UNDEFINED)
	Float          DataType = DataType(onnxpb.TensorProto_FLOAT)
	UInt8          DataType = DataType(onnxpb.TensorProto_UINT8)
	Int8           DataType = DataType(onnxpb.TensorProto_INT8)
	UInt16         DataType = DataType(onnxpb.TensorProto_UINT16)
	Int16          DataType = DataType(onnxpb.TensorProto_INT16)
	Int32          DataType = DataType(onnxpb.TensorProto_INT32)
	Int64          DataType = DataType(onnxpb.TensorProto_INT64)
	String         DataType = DataType(onnxpb.TensorProto_STRING)
	Bool           DataType = DataType(onnxpb.TensorProto_BOOL)
	Float16        DataType = DataType(onnxpb.TensorProto_FLOAT16)
	Double         DataType = DataType(onnxpb.TensorProto_DOUBLE)
	UInt32         DataType = DataType(onnxpb.TensorProto_UINT32)
	UInt64         DataType = DataType(onnxpb.TensorProto_UINT64)
	Complex64      DataType = DataType(onnxpb.TensorProto_COMPLEX64)
	Complex128     DataType = DataType(onnxpb.TensorProto_COMPLEX128)
	BFloat16       DataType = DataType(onnxpb.TensorProto_BFLOAT16)
	Float8E4M3FN   DataType = DataType(onnxpb.TensorProto_FLOAT8E4M3FN)
	Float8E4M3FNUZ DataType = DataType(onnxpb.TensorProto_FLOAT8E4M3FNUZ)
	Float8E5M2     DataType = DataType(onnxpb.TensorProto_FLOAT8E5M2)
	Float8E5M2FNUZ DataType = DataType(onnxpb.TensorProto_FLOAT8E5M2FNUZ)
	UInt4          DataType = DataType(onnxpb.TensorProto_UINT4)
	Int4           DataType = DataType(onnxpb.TensorProto_INT4)
	Float4E2M1     DataType = DataType(onnxpb.TensorProto_FLOAT4E2M1)
	Float8E8M0     DataType = DataType(onnxpb.TensorProto_FLOAT8E8M0)
)

// String returns the ONNX name of the type ("FLOAT", "INT64", ...), or
// "DataType(n)" for a value this package does not know.
func (dt DataType) String() string {
	if name, ok := onnxpb.TensorProto_DataType_name[int32(dt)]; ok {
		return name
	}
	return fmt.Sprintf("DataType(%d)", int32(dt))
}

// IsFloat reports whether dt is a floating-point type (including float16,
// bfloat16, the float8/float4 formats and double; not complex).
func (dt DataType) IsFloat() bool {
	switch dt {
	case Float, Float16, BFloat16, Double,
		Float8E4M3FN, Float8E4M3FNUZ, Float8E5M2, Float8E5M2FNUZ, Float4E2M1, Float8E8M0:
		return true
	}
	return false
}

// bitSize returns the number of bits one element occupies in raw_data, or 0
// for types without a fixed width (STRING, UNDEFINED, unknown values).
func (dt DataType) bitSize() int {
	switch dt {
	case Bool, Int8, UInt8, Float8E4M3FN, Float8E4M3FNUZ, Float8E5M2, Float8E5M2FNUZ, Float8E8M0:
		return 8
	case Int16, UInt16, Float16, BFloat16:
		return 16
	case Float, Int32, UInt32:
		return 32
	case Double, Int64, UInt64, Complex64:
		return 64
	case Complex128:
		return 128
	case Int4, UInt4, Float4E2M1:
		return 4
	}
	return 0
}

// RawSize returns the number of bytes n elements of type dt take in raw_data
// (4-bit types are packed two to a byte). It returns an error for types
// without a fixed width and for sizes that overflow int64.
func (dt DataType) RawSize(n int64) (int64, error) {
	bits := int64(dt.bitSize())
	if bits == 0 {
		return 0, fmt.Errorf("data type %s has no fixed element size", dt)
	}
	if n < 0 {
		return 0, fmt.Errorf("negative element count %d", n)
	}
	if n > math.MaxInt64/bits {
		return 0, fmt.Errorf("%d elements of %s overflow int64 bytes", n, dt)
	}
	return (n*bits + 7) / 8, nil
}

// DataTypeName returns the ONNX name of an element type held as int32, as
// found in TensorProto.data_type or TypeProto.Tensor.elem_type.
func DataTypeName(dt int32) string { return DataType(dt).String() }

// NumElements returns the number of elements of t: the product of its dims,
// 1 for a scalar (no dims). It returns an error for a negative dim or a
// product that overflows int64.
func NumElements(t *onnxpb.TensorProto) (int64, error) {
	return numElements(t.GetDims())
}

func numElements(dims []int64) (int64, error) {
	n := int64(1)
	for i, d := range dims {
		if d < 0 {
			return 0, fmt.Errorf("dim %d is negative (%d)", i, d)
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, fmt.Errorf("dims %v overflow int64", dims)
		}
		n *= d
	}
	return n, nil
}

// FloatTensor returns a FLOAT tensor named name with the given dims and data
// stored in raw_data. dims must describe len(data) elements; nil or empty dims
// make a scalar (one element). The dims slice is copied.
func FloatTensor(name string, dims []int64, data []float32) *onnxpb.TensorProto {
	raw := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return rawTensor(name, Float, dims, raw)
}

// DoubleTensor returns a DOUBLE tensor with data stored in raw_data; see FloatTensor.
func DoubleTensor(name string, dims []int64, data []float64) *onnxpb.TensorProto {
	raw := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(v))
	}
	return rawTensor(name, Double, dims, raw)
}

// Int64Tensor returns an INT64 tensor with data stored in raw_data; see FloatTensor.
func Int64Tensor(name string, dims []int64, data []int64) *onnxpb.TensorProto {
	raw := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	return rawTensor(name, Int64, dims, raw)
}

// Int32Tensor returns an INT32 tensor with data stored in raw_data; see FloatTensor.
func Int32Tensor(name string, dims []int64, data []int32) *onnxpb.TensorProto {
	raw := make([]byte, 4*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint32(raw[4*i:], uint32(v))
	}
	return rawTensor(name, Int32, dims, raw)
}

// BoolTensor returns a BOOL tensor (one byte per element) stored in raw_data; see FloatTensor.
func BoolTensor(name string, dims []int64, data []bool) *onnxpb.TensorProto {
	raw := make([]byte, len(data))
	for i, v := range data {
		if v {
			raw[i] = 1
		}
	}
	return rawTensor(name, Bool, dims, raw)
}

// ScalarFloat returns a rank-0 FLOAT tensor holding v.
func ScalarFloat(name string, v float32) *onnxpb.TensorProto {
	return FloatTensor(name, nil, []float32{v})
}

// ScalarInt64 returns a rank-0 INT64 tensor holding v.
func ScalarInt64(name string, v int64) *onnxpb.TensorProto {
	return Int64Tensor(name, nil, []int64{v})
}

func rawTensor(name string, dt DataType, dims []int64, raw []byte) *onnxpb.TensorProto {
	t := &onnxpb.TensorProto{
		DataType: proto.Int32(int32(dt)),
		RawData:  raw,
	}
	if len(dims) > 0 {
		t.Dims = append([]int64(nil), dims...)
	}
	if name != "" {
		t.Name = proto.String(name)
	}
	return t
}

// errExternal is returned by the readers for a tensor whose data still lives
// in an external file (a model that was not loaded with Load).
var errExternal = errors.New("data is in an external file that was not loaded (use onnx.Load)")

// tensorLabel names a tensor in error messages.
func tensorLabel(t *onnxpb.TensorProto) string {
	if t.GetName() == "" {
		return "tensor"
	}
	return fmt.Sprintf("tensor %q", t.GetName())
}

// checkedRaw returns t's raw_data if it holds exactly n elements of dt.
func checkedRaw(t *onnxpb.TensorProto, dt DataType, n int64) ([]byte, error) {
	want, err := dt.RawSize(n)
	if err != nil {
		return nil, err
	}
	if int64(len(t.RawData)) != want {
		return nil, fmt.Errorf("raw_data has %d bytes, want %d for %d elements of %s", len(t.RawData), want, n, dt)
	}
	return t.RawData, nil
}

// tensorData prepares a read of t: element count and type, and whether the
// data is in raw_data.
func tensorData(t *onnxpb.TensorProto) (n int64, dt DataType, useRaw bool, err error) {
	if t == nil {
		return 0, 0, false, errors.New("nil tensor")
	}
	if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL && t.RawData == nil {
		return 0, 0, false, errExternal
	}
	if t.Segment != nil {
		return 0, 0, false, errors.New("segmented tensors are not supported")
	}
	n, err = NumElements(t)
	if err != nil {
		return 0, 0, false, err
	}
	return n, DataType(t.GetDataType()), t.RawData != nil, nil
}

func countMismatch(field string, got int, n int64) error {
	return fmt.Errorf("%s has %d values, want %d", field, got, n)
}

// TensorFloats returns the elements of t as float32. FLOAT tensors are read
// from raw_data (little-endian) or float_data; FLOAT16 and BFLOAT16 tensors
// (raw_data or int32_data) are converted exactly. Other types are an error.
// The returned slice is a copy.
func TensorFloats(t *onnxpb.TensorProto) ([]float32, error) {
	out, err := tensorFloats(t)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tensorLabel(t), err)
	}
	return out, nil
}

func tensorFloats(t *onnxpb.TensorProto) ([]float32, error) {
	n, dt, useRaw, err := tensorData(t)
	if err != nil {
		return nil, err
	}
	switch dt {
	case Float:
		if !useRaw {
			if int64(len(t.FloatData)) != n {
				return nil, countMismatch("float_data", len(t.FloatData), n)
			}
			return append([]float32(nil), t.FloatData...), nil
		}
		raw, err := checkedRaw(t, dt, n)
		if err != nil {
			return nil, err
		}
		out := hugepages.Floats(int(n))
		if littleEndian && n > 0 {
			copy(unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), 4*n), raw) // memmove
			return out, nil
		}
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		return out, nil
	case Float16, BFloat16:
		conv := Float16ToFloat32
		if dt == BFloat16 {
			conv = BFloat16ToFloat32
		}
		if !useRaw {
			if int64(len(t.Int32Data)) != n {
				return nil, countMismatch("int32_data", len(t.Int32Data), n)
			}
			out := make([]float32, n)
			for i, v := range t.Int32Data {
				out[i] = conv(uint16(v))
			}
			return out, nil
		}
		raw, err := checkedRaw(t, dt, n)
		if err != nil {
			return nil, err
		}
		out := make([]float32, n)
		for i := range out {
			out[i] = conv(binary.LittleEndian.Uint16(raw[2*i:]))
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot read %s as float32", dt)
}

// TensorDoubles returns the elements of t as float64. DOUBLE tensors are read
// from raw_data or double_data; FLOAT, FLOAT16 and BFLOAT16 tensors are
// widened exactly. The returned slice is a copy.
func TensorDoubles(t *onnxpb.TensorProto) ([]float64, error) {
	if DataType(t.GetDataType()) != Double {
		f, err := TensorFloats(t)
		if err != nil {
			return nil, err
		}
		out := make([]float64, len(f))
		for i, v := range f {
			out[i] = float64(v)
		}
		return out, nil
	}
	n, dt, useRaw, err := tensorData(t)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tensorLabel(t), err)
	}
	if !useRaw {
		if int64(len(t.DoubleData)) != n {
			return nil, fmt.Errorf("%s: %w", tensorLabel(t), countMismatch("double_data", len(t.DoubleData), n))
		}
		return append([]float64(nil), t.DoubleData...), nil
	}
	raw, err := checkedRaw(t, dt, n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tensorLabel(t), err)
	}
	out := make([]float64, n)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
	}
	return out, nil
}

// TensorInt64s returns the elements of t as int64. INT64 tensors are read
// from raw_data or int64_data; INT32, INT16, INT8, UINT32, UINT16, UINT8 and
// BOOL tensors are widened. The returned slice is a copy.
func TensorInt64s(t *onnxpb.TensorProto) ([]int64, error) {
	out, err := tensorInt64s(t)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tensorLabel(t), err)
	}
	return out, nil
}

func tensorInt64s(t *onnxpb.TensorProto) ([]int64, error) {
	n, dt, useRaw, err := tensorData(t)
	if err != nil {
		return nil, err
	}
	// Sizes are checked against the data before allocating, so that
	// corrupt dims cannot trigger a huge allocation.
	switch dt {
	case Int64:
		if !useRaw {
			if int64(len(t.Int64Data)) != n {
				return nil, countMismatch("int64_data", len(t.Int64Data), n)
			}
			return append([]int64(nil), t.Int64Data...), nil
		}
	case UInt32:
		if !useRaw {
			if int64(len(t.Uint64Data)) != n {
				return nil, countMismatch("uint64_data", len(t.Uint64Data), n)
			}
			out := make([]int64, n)
			for i, v := range t.Uint64Data {
				out[i] = int64(uint32(v))
			}
			return out, nil
		}
	case Int32, Int16, Int8, UInt16, UInt8, Bool:
		if !useRaw {
			if int64(len(t.Int32Data)) != n {
				return nil, countMismatch("int32_data", len(t.Int32Data), n)
			}
			out := make([]int64, n)
			for i, v := range t.Int32Data {
				out[i] = int64(v)
			}
			return out, nil
		}
	default:
		return nil, fmt.Errorf("cannot read %s as int64", dt)
	}
	raw, err := checkedRaw(t, dt, n)
	if err != nil {
		return nil, err
	}
	out := make([]int64, n)
	le := binary.LittleEndian
	for i := range out {
		switch dt {
		case Int64:
			out[i] = int64(le.Uint64(raw[8*i:]))
		case Int32:
			out[i] = int64(int32(le.Uint32(raw[4*i:])))
		case UInt32:
			out[i] = int64(le.Uint32(raw[4*i:]))
		case Int16:
			out[i] = int64(int16(le.Uint16(raw[2*i:])))
		case UInt16:
			out[i] = int64(le.Uint16(raw[2*i:]))
		case Int8:
			out[i] = int64(int8(raw[i]))
		case UInt8, Bool:
			out[i] = int64(raw[i])
		}
	}
	return out, nil
}

// SetTensorFloats replaces the data of t with data, keeping its name, type
// and dims. t must be FLOAT, FLOAT16 or BFLOAT16 (values are rounded to
// nearest even for the 16-bit types) and len(data) must match its dims. The
// data is written to raw_data; typed data fields and external-data fields
// are cleared.
func SetTensorFloats(t *onnxpb.TensorProto, data []float32) error {
	if err := checkSet(t, len(data)); err != nil {
		return err
	}
	var raw []byte
	switch dt := DataType(t.GetDataType()); dt {
	case Float:
		raw = make([]byte, 4*len(data))
		if littleEndian && len(data) > 0 {
			copy(raw, unsafe.Slice((*byte)(unsafe.Pointer(&data[0])), 4*len(data))) // memmove
			break
		}
		for i, v := range data {
			binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
		}
	case Float16, BFloat16:
		conv := Float32ToFloat16
		if dt == BFloat16 {
			conv = Float32ToBFloat16
		}
		raw = make([]byte, 2*len(data))
		for i, v := range data {
			binary.LittleEndian.PutUint16(raw[2*i:], conv(v))
		}
	default:
		return fmt.Errorf("%s: cannot store float32 values in a %s tensor", tensorLabel(t), dt)
	}
	setRaw(t, raw)
	return nil
}

// ShareTensorFloats is SetTensorFloats without the copy, for a FLOAT tensor on a
// little-endian machine: t's raw_data becomes data's own bytes, so a model can be
// written out without a second copy of its weights. t then changes with data, and
// nothing may write into t's raw data; for other types it copies, as SetTensorFloats.
func ShareTensorFloats(t *onnxpb.TensorProto, data []float32) error {
	if DataType(t.GetDataType()) != Float || !littleEndian || len(data) == 0 {
		return SetTensorFloats(t, data)
	}
	if err := checkSet(t, len(data)); err != nil {
		return err
	}
	setRaw(t, unsafe.Slice((*byte)(unsafe.Pointer(&data[0])), 4*len(data)))
	return nil
}

// SetTensorDoubles replaces the data of t, which must be DOUBLE, with data;
// see SetTensorFloats.
func SetTensorDoubles(t *onnxpb.TensorProto, data []float64) error {
	if err := checkSet(t, len(data)); err != nil {
		return err
	}
	if dt := DataType(t.GetDataType()); dt != Double {
		return fmt.Errorf("%s: cannot store float64 values in a %s tensor", tensorLabel(t), dt)
	}
	raw := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(raw[8*i:], math.Float64bits(v))
	}
	setRaw(t, raw)
	return nil
}

// SetTensorInt64s replaces the data of t, which must be INT64, with data;
// see SetTensorFloats.
func SetTensorInt64s(t *onnxpb.TensorProto, data []int64) error {
	if err := checkSet(t, len(data)); err != nil {
		return err
	}
	if dt := DataType(t.GetDataType()); dt != Int64 {
		return fmt.Errorf("%s: cannot store int64 values in a %s tensor", tensorLabel(t), dt)
	}
	raw := make([]byte, 8*len(data))
	for i, v := range data {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(v))
	}
	setRaw(t, raw)
	return nil
}

func checkSet(t *onnxpb.TensorProto, got int) error {
	if t == nil {
		return errors.New("nil tensor")
	}
	n, err := NumElements(t)
	if err != nil {
		return fmt.Errorf("%s: %w", tensorLabel(t), err)
	}
	if int64(got) != n {
		return fmt.Errorf("%s: got %d values for dims %v (%d elements)", tensorLabel(t), got, t.GetDims(), n)
	}
	return nil
}

// littleEndian is whether this machine stores numbers as ONNX's raw_data does, so
// float32 data converts by copying bytes.
var littleEndian = func() bool { x := uint16(1); return *(*byte)(unsafe.Pointer(&x)) == 1 }()

// FloatsView returns t's FLOAT data as a []float32 that shares memory with its
// raw_data, when it can (raw_data, little-endian machine, 4-byte aligned): writes to
// the view change the tensor, and no copy of the weights is made. ok is false (and
// nothing shared) otherwise; use TensorFloats then.
func FloatsView(t *onnxpb.TensorProto) (view []float32, ok bool) {
	n, dt, useRaw, err := tensorData(t)
	if err != nil || dt != Float || !useRaw || !littleEndian {
		return nil, false
	}
	raw, err := checkedRaw(t, dt, n)
	if err != nil {
		return nil, false
	}
	if n == 0 {
		return []float32{}, true
	}
	if uintptr(unsafe.Pointer(&raw[0]))%4 != 0 {
		return nil, false
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&raw[0])), n), true
}

func setRaw(t *onnxpb.TensorProto, raw []byte) {
	t.RawData = raw
	t.FloatData = nil
	t.Int32Data = nil
	t.Int64Data = nil
	t.DoubleData = nil
	t.Uint64Data = nil
	t.StringData = nil
	t.ExternalData = nil
	t.DataLocation = nil
}

// Float16ToFloat32 converts IEEE 754 half-precision bits to float32 exactly.
func Float16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp != 0: // normal
		return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
	case mant == 0: // signed zero
		return math.Float32frombits(sign)
	}
	// Subnormal: value = mant * 2^-24.
	f := float32(mant) * (1.0 / (1 << 24))
	if sign != 0 {
		f = -f
	}
	return f
}

// Float32ToFloat16 converts f to IEEE 754 half-precision bits, rounding to
// nearest even; values beyond the half range become infinities and NaNs stay
// NaNs.
func Float32ToFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff { // inf or NaN
		if mant == 0 {
			return sign | 0x7c00
		}
		return sign | 0x7e00 | uint16(mant>>13)
	}
	e := exp - 127 + 15
	if e >= 0x1f {
		return sign | 0x7c00
	}
	if e <= 0 {
		// Subnormal half (or zero): shift the full significand into place.
		if e < -10 {
			return sign
		}
		m := mant | 0x800000
		shift := uint32(14 - e)
		half := m >> shift
		rem := m & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++
		}
		return sign | uint16(half)
	}
	half := uint32(e)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++ // may carry into the exponent, up to infinity: that is correct
	}
	return sign | uint16(half)
}

// BFloat16ToFloat32 converts bfloat16 bits to float32 exactly.
func BFloat16ToFloat32(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// Float32ToBFloat16 converts f to bfloat16 bits, rounding to nearest even
// (as PyTorch does); NaNs stay NaNs.
func Float32ToBFloat16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 { // NaN: keep it quiet and a NaN
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}
