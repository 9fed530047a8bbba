package ort

import (
	"strings"
	"testing"
)

// TestZeroTensors: the zero constructors allocate exactly the shape's elements, all zero,
// keep their own copy of the shape, and refuse a negative or overflowing shape.
func TestZeroTensors(t *testing.T) {
	shape := []int64{2, 3}
	f, err := NewZeroFloatTensor(shape)
	if err != nil || len(f.F32) != 6 || f.F64 != nil || f.I64 != nil {
		t.Fatalf("NewZeroFloatTensor([2 3]) = %+v, %v", f, err)
	}
	d, err := NewZeroDoubleTensor([]int64{4})
	if err != nil || len(d.F64) != 4 {
		t.Fatalf("NewZeroDoubleTensor([4]) = %+v, %v", d, err)
	}
	i, err := NewZeroInt64Tensor([]int64{})
	if err != nil || len(i.I64) != 1 {
		t.Fatalf("NewZeroInt64Tensor(scalar) = %+v, %v", i, err)
	}
	e, err := NewZeroFloatTensor([]int64{3, 0})
	if err != nil || e.F32 == nil || len(e.F32) != 0 {
		t.Fatalf("NewZeroFloatTensor([3 0]) = %+v, %v; want an empty non-nil buffer", e, err)
	}
	for _, v := range f.F32 {
		if v != 0 {
			t.Fatalf("zero tensor holds %v", f.F32)
		}
	}
	shape[0] = 9
	if f.Shape[0] != 2 {
		t.Errorf("NewZeroFloatTensor kept the caller's shape slice")
	}
	for _, c := range []struct {
		name  string
		shape []int64
		want  string
	}{
		{"negative", []int64{2, -1}, "negative dimension -1"},
		{"overflow", []int64{1 << 40, 1 << 40}, "more elements"},
	} {
		for _, mk := range []func([]int64) (*Tensor, error){NewZeroFloatTensor, NewZeroDoubleTensor, NewZeroInt64Tensor} {
			if x, err := mk(c.shape); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: got %+v, %v; want an error containing %q", c.name, x, err, c.want)
			}
		}
	}
}

// TestMustTensors: the Must constructors are views like NewFloatTensor (the data is the
// caller's) and panic, naming the mismatch, on a shape that does not fit the data.
func TestMustTensors(t *testing.T) {
	data := []float32{1, 2, 3, 4}
	x := MustFloatTensor([]int64{2, 2}, data)
	data[3] = 7
	if x.F32[3] != 7 {
		t.Errorf("MustFloatTensor copied its data")
	}
	if y := MustInt64Tensor([]int64{2}, []int64{5, 6}); y.I64[1] != 6 || len(y.Shape) != 1 {
		t.Errorf("MustInt64Tensor = %+v", y)
	}
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"float", func() { MustFloatTensor([]int64{2, 3}, data) }},
		{"int64", func() { MustInt64Tensor([]int64{3}, []int64{1}) }},
	} {
		func() {
			defer func() {
				r := recover()
				if s, ok := r.(string); !ok || !strings.Contains(s, "needs") {
					t.Errorf("%s: recovered %v, want a panic naming the mismatch", c.name, r)
				}
			}()
			c.f()
		}()
	}
}
