// Package ort is ortalign's binding to ONNX Runtime: it finds and loads the shared
// library, and wraps onnxruntime_go sessions so that callers feed and fetch plain Go
// slices. It owns the only process-wide state of the project, the ORT environment.
package ort

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	ortgo "github.com/yalue/onnxruntime_go"
)

// LibEnv is the environment variable that names the ONNX Runtime shared library.
const LibEnv = "ORTALIGN_ORT_LIB"

// libName is the file name the setup step installs (from onnxruntime-node@1.24.1).
const libName = "libonnxruntime.so.1"

// setupDir is where scripts/setup-ort.sh puts the library, relative to the repository root.
const setupDir = "third_party/ort"

// ErrLibraryNotFound is returned when no ONNX Runtime library can be located.
var ErrLibraryNotFound = errors.New("ONNX Runtime library not found")

// howToGet tells the user how to obtain the library (a command adds how to point at it).
const howToGet = "run `make setup` (scripts/setup-ort.sh fetches it from npm onnxruntime-node@1.24.1) or name the library's path"

var (
	initMu   sync.Mutex
	initLib  string
	initDone bool
)

// FindLibrary returns the path of the ONNX Runtime shared library, looking in order at
// explicit (a path the caller was given), $ORTALIGN_ORT_LIB, next to the running binary, and the
// setup folder (third_party/ort) of the enclosing source checkout.
func FindLibrary(explicit string) (string, error) {
	if explicit != "" {
		if err := checkFile(explicit); err != nil {
			return "", fmt.Errorf("%s: %w: %s", explicit, err, howToGet)
		}
		return explicit, nil
	}
	if p := os.Getenv(LibEnv); p != "" {
		if err := checkFile(p); err != nil {
			return "", fmt.Errorf("%s=%s: %w: %s", LibEnv, p, err, howToGet)
		}
		return p, nil
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), libName)
		tried = append(tried, p)
		if checkFile(p) == nil {
			return p, nil
		}
	}
	for _, start := range startDirs() {
		for dir := start; ; dir = filepath.Dir(dir) {
			p := filepath.Join(dir, setupDir, libName)
			if checkFile(p) == nil {
				return p, nil
			}
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				tried = append(tried, p)
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	return "", fmt.Errorf("%w (tried $%s, %v): %s", ErrLibraryNotFound, LibEnv, tried, howToGet)
}

func startDirs() []string {
	var dirs []string
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, wd)
	}
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	return dirs
}

func checkFile(p string) error {
	st, err := os.Stat(p)
	if err != nil {
		return err
	}
	if st.IsDir() {
		return fmt.Errorf("is a directory")
	}
	return nil
}

// Init loads the ONNX Runtime library (found with FindLibrary(explicit)) and creates the
// environment. It is safe to call more than once; later calls are no-ops, and asking for
// a different library after the first load is an error.
func Init(explicit string) error {
	initMu.Lock()
	defer initMu.Unlock()
	if initDone {
		if explicit != "" && explicit != initLib {
			return fmt.Errorf("ONNX Runtime already loaded from %s; cannot switch to %s", initLib, explicit)
		}
		return nil
	}
	lib, err := FindLibrary(explicit)
	if err != nil {
		return err
	}
	ortgo.SetSharedLibraryPath(lib)
	// Failures come back as errors with ORT's message; its own log would only repeat them.
	if err := ortgo.InitializeEnvironment(ortgo.WithLogLevelFatal()); err != nil {
		return fmt.Errorf("load ONNX Runtime %s: %w (expected onnxruntime 1.24.x for linux-x64; run `make setup`)", lib, err)
	}
	initLib, initDone = lib, true
	return nil
}

// Version returns the version of the ONNX Runtime library that sessions run on
// ("1.24.1"), loading the library (Init("")) when it is not loaded yet.
func Version() (string, error) {
	if err := Init(""); err != nil {
		return "", err
	}
	v := ortgo.GetVersion()
	if v == "" {
		return "", errors.New("ONNX Runtime did not report its version")
	}
	return v, nil
}

// Options configures a session.
type Options struct {
	// Threads is the intra-op thread count; 0 means all cores.
	Threads int
	// DisableOptimizations turns graph optimizations off (useful to compare numerics).
	DisableOptimizations bool
	// ProfilePrefix, when set, makes ORT write a per-operator JSON profile to
	// ProfilePrefix_<date>.json when the session is destroyed.
	ProfilePrefix string
	// NoSpinning makes the intra-op threads sleep as soon as they are idle instead of
	// spinning for the next parallel region: slower on an idle machine, but they do not
	// take cores from the caller's goroutines between runs or from other processes.
	NoSpinning bool
	// DisablePrepacking keeps the weights as they are instead of repacking constant MatMul
	// operands for the kernels (a second copy of them): for sessions run a few times.
	DisablePrepacking bool
	// NoScalarOutputs is the caller's word that no fetched output is a scalar (0-d):
	// outputs whose rank the model does not declare are then run as tensors, without
	// asking ONNX Runtime's shape inference, which builds a throwaway session as costly
	// as the real one.
	NoScalarOutputs bool
}

// Session is an ONNX Runtime inference session with fixed input and output names.
type Session struct {
	sess    *ortgo.DynamicAdvancedSession
	inputs  []ortgo.InputOutputInfo
	outputs []ortgo.InputOutputInfo
	inIdx   map[string]int
	outIdx  map[string]int
}

// Info describes a session input or output.
type Info struct {
	Name     string
	Dims     []int64 // -1 for dynamic dimensions
	DataType string
}

// NewSession creates a session from a serialized model. When outputs is nil, all model
// outputs are fetched.
func NewSession(model []byte, outputs []string, o Options) (*Session, error) {
	return newSession(model, "", outputs, o)
}

// NewSessionFromFile creates a session from a model file (external data is resolved
// relative to it).
func NewSessionFromFile(path string, outputs []string, o Options) (*Session, error) {
	return newSession(nil, path, outputs, o)
}

func newSession(model []byte, path string, outputs []string, o Options) (*Session, error) {
	if err := Init(""); err != nil {
		return nil, err
	}
	opts, err := ortgo.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	defer opts.Destroy()
	threads := o.Threads
	if threads <= 0 {
		threads = runtime.NumCPU()
	}
	if err := opts.SetIntraOpNumThreads(threads); err != nil {
		return nil, fmt.Errorf("set intra-op threads: %w", err)
	}
	if err := opts.SetInterOpNumThreads(1); err != nil {
		return nil, fmt.Errorf("set inter-op threads: %w", err)
	}
	if o.DisableOptimizations {
		if err := opts.SetGraphOptimizationLevel(ortgo.GraphOptimizationLevelDisableAll); err != nil {
			return nil, err
		}
	}
	// ORT's memory pattern plans one buffer for a run's peak; measured on the DPO step
	// benchmark it costs 30% more resident memory (1.14 GB against 0.82 GB) and no speed.
	if err := opts.SetMemPattern(false); err != nil {
		return nil, fmt.Errorf("disable memory pattern: %w", err)
	}
	for _, c := range []struct {
		on         bool
		key, value string
	}{{o.NoSpinning, "session.intra_op.allow_spinning", "0"}, {o.DisablePrepacking, "session.disable_prepacking", "1"}} {
		if c.on {
			if err := opts.AddSessionConfigEntry(c.key, c.value); err != nil {
				return nil, fmt.Errorf("session option %s: %w", c.key, err)
			}
		}
	}
	if o.ProfilePrefix != "" {
		if err := opts.EnableProfiling(o.ProfilePrefix); err != nil {
			return nil, fmt.Errorf("enable profiling: %w", err)
		}
	}
	// The inputs and outputs are read from the model's bytes: the binding's
	// GetInputOutputInfo builds a second, throwaway session, as costly as the real one on
	// a large model. It is still asked when an output's rank is not declared, since only
	// ONNX Runtime's shape inference then tells a scalar, which must be pre-allocated.
	var ins, outs []ortgo.InputOutputInfo
	if path != "" {
		ins, outs, err = modelFileIO(path)
	} else {
		ins, outs, err = modelIO(model)
	}
	if err == nil && !ranksKnown(outs, outputs) && o.NoScalarOutputs {
		for i := range outs {
			if outs[i].Dimensions == nil {
				outs[i].Dimensions = ortgo.NewShape(-1) // a tensor of unknown rank
			}
		}
	}
	if err == nil && !ranksKnown(outs, outputs) {
		if path != "" {
			ins, outs, err = ortgo.GetInputOutputInfoWithOptions(path, opts)
		} else {
			ins, outs, err = ortgo.GetInputOutputInfoWithONNXData(model)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read model inputs/outputs: %w", err)
	}
	s := &Session{inputs: ins, inIdx: map[string]int{}, outIdx: map[string]int{}}
	byName := map[string]ortgo.InputOutputInfo{}
	for _, out := range outs {
		byName[out.Name] = out
	}
	if outputs == nil {
		s.outputs = outs
	} else {
		for _, name := range outputs {
			info, ok := byName[name]
			if !ok {
				return nil, fmt.Errorf("model has no output %q", name)
			}
			s.outputs = append(s.outputs, info)
		}
	}
	// onnxruntime_go's Run indexes the first input and output value, so it panics on a
	// session without inputs or fetched outputs: refuse those here.
	if len(s.inputs) == 0 {
		return nil, errors.New("model has no inputs (every value is an initializer or a constant); ONNX Runtime's Go binding cannot run it: add an unused input")
	}
	if len(s.outputs) == 0 {
		return nil, errors.New("no outputs to fetch: the model has none, or the list of outputs is empty")
	}
	inNames := make([]string, len(s.inputs))
	for i, in := range s.inputs {
		inNames[i] = in.Name
		s.inIdx[in.Name] = i
	}
	outNames := make([]string, len(s.outputs))
	for i, out := range s.outputs {
		outNames[i] = out.Name
		s.outIdx[out.Name] = i
	}
	if path != "" {
		s.sess, err = ortgo.NewDynamicAdvancedSession(path, inNames, outNames, opts)
	} else {
		s.sess, err = ortgo.NewDynamicAdvancedSessionWithONNXData(model, inNames, outNames, opts)
	}
	if err != nil {
		return nil, fmt.Errorf("create ONNX Runtime session: %w", err)
	}
	return s, nil
}

// Inputs describes the session's inputs.
func (s *Session) Inputs() []Info { return infos(s.inputs) }

// Outputs describes the session's fetched outputs.
func (s *Session) Outputs() []Info { return infos(s.outputs) }

// HasInput reports whether the model has an input of that name.
func (s *Session) HasInput(name string) bool { _, ok := s.inIdx[name]; return ok }

func infos(in []ortgo.InputOutputInfo) []Info {
	out := make([]Info, len(in))
	for i, x := range in {
		out[i] = Info{Name: x.Name, Dims: append([]int64(nil), x.Dimensions...), DataType: x.DataType.String()}
	}
	return out
}

// Destroy releases the session.
func (s *Session) Destroy() {
	if s.sess != nil {
		s.sess.Destroy()
		s.sess = nil
	}
}

// Tensor is a Go-owned tensor: exactly one of F32, F64, I64 holds the data, in row-major
// order, with as many elements as the product of Shape (1 for a scalar, whose Shape is
// empty). A tensor with a zero dimension holds an empty, non-nil buffer. The constructors
// and Session.Run check this with Check.
type Tensor struct {
	Shape []int64
	F32   []float32
	F64   []float64
	I64   []int64
}

// NewFloatTensor returns a float32 tensor of the given shape over data: a view, the data
// is not copied (the shape is), so a hot path can feed Go memory as it is. It is an error
// when a dimension is negative or data does not hold exactly the shape's number of
// elements; nil data is the empty buffer of a shape with a zero dimension.
func NewFloatTensor(shape []int64, data []float32) (*Tensor, error) {
	if data == nil {
		data = []float32{}
	}
	return checked(&Tensor{Shape: append([]int64{}, shape...), F32: data})
}

// NewDoubleTensor is NewFloatTensor for float64 data.
func NewDoubleTensor(shape []int64, data []float64) (*Tensor, error) {
	if data == nil {
		data = []float64{}
	}
	return checked(&Tensor{Shape: append([]int64{}, shape...), F64: data})
}

// NewInt64Tensor is NewFloatTensor for int64 data.
func NewInt64Tensor(shape []int64, data []int64) (*Tensor, error) {
	if data == nil {
		data = []int64{}
	}
	return checked(&Tensor{Shape: append([]int64{}, shape...), I64: data})
}

// NewZeroFloatTensor returns a float32 tensor of the given shape in a new buffer of
// zeros. A negative dimension, or more elements than an int counts, is an error.
func NewZeroFloatTensor(shape []int64) (*Tensor, error) {
	n, err := elements(shape)
	if err != nil {
		return nil, err
	}
	return NewFloatTensor(shape, make([]float32, n))
}

// NewZeroDoubleTensor is NewZeroFloatTensor for float64.
func NewZeroDoubleTensor(shape []int64) (*Tensor, error) {
	n, err := elements(shape)
	if err != nil {
		return nil, err
	}
	return NewDoubleTensor(shape, make([]float64, n))
}

// NewZeroInt64Tensor is NewZeroFloatTensor for int64.
func NewZeroInt64Tensor(shape []int64) (*Tensor, error) {
	n, err := elements(shape)
	if err != nil {
		return nil, err
	}
	return NewInt64Tensor(shape, make([]int64, n))
}

// MustFloatTensor is NewFloatTensor for a shape the caller computed together with its
// data (a batch it laid out, a parameter it allocated), where a mismatch is a bug in the
// caller, not bad input: it panics instead of returning the error. Anything read from a
// file or given by a user goes through NewFloatTensor.
func MustFloatTensor(shape []int64, data []float32) *Tensor {
	return must(NewFloatTensor(shape, data))
}

// MustInt64Tensor is MustFloatTensor for int64 data.
func MustInt64Tensor(shape []int64, data []int64) *Tensor {
	return must(NewInt64Tensor(shape, data))
}

func must(t *Tensor, err error) *Tensor {
	if err != nil {
		panic("ort: " + err.Error())
	}
	return t
}

func checked(t *Tensor) (*Tensor, error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	return t, nil
}

// elements is the number of elements of a tensor of the given shape (1 for a scalar).
func elements(shape []int64) (int, error) {
	n := int64(1)
	for i, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("tensor of shape %v has a negative dimension %d (axis %d)", shape, d, i)
		}
		if d != 0 && n > math.MaxInt/d {
			return 0, fmt.Errorf("tensor of shape %v has more elements than an int counts", shape)
		}
		n *= d
	}
	return int(n), nil
}

// Check reports whether t is well formed: exactly one buffer (F32, F64 or I64) is set
// (non-nil), no dimension is negative, and the buffer holds exactly as many elements as
// the shape (an empty buffer only for a shape with a zero dimension). Session.Run checks
// every tensor it is given, so a malformed one is an error rather than a crash in ONNX
// Runtime's binding.
func (t *Tensor) Check() error {
	if t == nil {
		return errors.New("nil tensor")
	}
	var set []string
	var n int
	if t.F32 != nil {
		set, n = append(set, "F32"), len(t.F32)
	}
	if t.F64 != nil {
		set, n = append(set, "F64"), len(t.F64)
	}
	if t.I64 != nil {
		set, n = append(set, "I64"), len(t.I64)
	}
	switch len(set) {
	case 0:
		return fmt.Errorf("tensor of shape %v has no data buffer (F32, F64 or I64)", t.Shape)
	case 1:
	default:
		return fmt.Errorf("tensor of shape %v has %d data buffers set (%s), want exactly one", t.Shape, len(set), strings.Join(set, ", "))
	}
	want, err := elements(t.Shape)
	if err != nil {
		return fmt.Errorf("%w (%s buffer of length %d)", err, set[0], n)
	}
	if n != want {
		return fmt.Errorf("tensor of shape %v needs %d elements, but its %s buffer has length %d", t.Shape, want, set[0], n)
	}
	return nil
}

func (t *Tensor) value() (ortgo.Value, error) {
	if err := t.Check(); err != nil {
		return nil, err
	}
	shape := ortgo.NewShape(t.Shape...)
	switch {
	case t.F32 != nil:
		if len(t.Shape) == 0 {
			return ortgo.NewScalar(t.F32[0])
		}
		return ortgo.NewTensor(shape, t.F32)
	case t.F64 != nil:
		if len(t.Shape) == 0 {
			return ortgo.NewScalar(t.F64[0])
		}
		return ortgo.NewTensor(shape, t.F64)
	case t.I64 != nil:
		if len(t.Shape) == 0 {
			return ortgo.NewScalar(t.I64[0])
		}
		return ortgo.NewTensor(shape, t.I64)
	}
	return nil, fmt.Errorf("tensor with shape %v has no data", t.Shape)
}

// Run feeds the named inputs and returns the fetched outputs by name. Inputs missing
// from in are an error. into optionally supplies Go buffers that ORT writes the named
// outputs into directly (their shape must be exact); they are returned as given.
// Scalar outputs are pre-allocated because onnxruntime_go cannot wrap 0-d ORT outputs.
func (s *Session) Run(in map[string]*Tensor, into map[string]*Tensor) (map[string]*Tensor, error) {
	if s.sess == nil {
		return nil, errors.New("run: the session is destroyed")
	}
	if len(s.inputs) == 0 || len(s.outputs) == 0 {
		// Not reachable through NewSession; onnxruntime_go would index an empty slice.
		return nil, fmt.Errorf("run: session has %d inputs and %d outputs; ONNX Runtime's Go binding needs at least one of each", len(s.inputs), len(s.outputs))
	}
	for _, info := range s.inputs {
		if t, ok := in[info.Name]; ok {
			if err := t.Check(); err != nil {
				return nil, fmt.Errorf("input %q: %w", info.Name, err)
			}
		}
	}
	for _, info := range s.outputs {
		if t, ok := into[info.Name]; ok {
			if err := t.Check(); err != nil {
				return nil, fmt.Errorf("output buffer %q: %w", info.Name, err)
			}
		}
	}
	inputs := make([]ortgo.Value, len(s.inputs))
	var owned []ortgo.Value
	defer func() {
		for _, v := range owned {
			v.Destroy()
		}
	}()
	for i, info := range s.inputs {
		t, ok := in[info.Name]
		if !ok {
			return nil, fmt.Errorf("missing input %q", info.Name)
		}
		v, err := t.value()
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", info.Name, err)
		}
		owned = append(owned, v)
		inputs[i] = v
	}
	outputs := make([]ortgo.Value, len(s.outputs))
	for i, info := range s.outputs {
		if t, ok := into[info.Name]; ok {
			v, err := t.value()
			if err != nil {
				return nil, fmt.Errorf("output buffer %q: %w", info.Name, err)
			}
			owned = append(owned, v)
			outputs[i] = v
			continue
		}
		// A scalar is allocated here: the binding cannot wrap a 0-d output ONNX Runtime
		// allocates.
		if len(info.Dimensions) == 0 {
			var v ortgo.Value
			var err error
			switch info.DataType {
			case ortgo.TensorElementDataTypeFloat:
				v, err = ortgo.NewEmptyScalar[float32]()
			case ortgo.TensorElementDataTypeDouble:
				v, err = ortgo.NewEmptyScalar[float64]()
			case ortgo.TensorElementDataTypeInt64:
				v, err = ortgo.NewEmptyScalar[int64]()
			default:
				return nil, fmt.Errorf("output %q: unsupported scalar type %s", info.Name, info.DataType)
			}
			if err != nil {
				return nil, err
			}
			owned = append(owned, v)
			outputs[i] = v
		}
	}
	if err := s.sess.Run(inputs, outputs); err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	res := make(map[string]*Tensor, len(outputs))
	for i, info := range s.outputs {
		if t, ok := into[info.Name]; ok {
			res[info.Name] = t
			continue
		}
		t, err := toTensor(outputs[i])
		if len(info.Dimensions) != 0 {
			outputs[i].Destroy() // ORT allocated it; the scalar ones are in owned
		}
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", info.Name, err)
		}
		res[info.Name] = t
	}
	return res, nil
}

func toTensor(v ortgo.Value) (*Tensor, error) {
	switch x := v.(type) {
	case *ortgo.Tensor[float32]:
		return &Tensor{Shape: x.GetShape().Clone(), F32: append([]float32(nil), x.GetData()...)}, nil
	case *ortgo.Tensor[float64]:
		return &Tensor{Shape: x.GetShape().Clone(), F64: append([]float64(nil), x.GetData()...)}, nil
	case *ortgo.Tensor[int64]:
		return &Tensor{Shape: x.GetShape().Clone(), I64: append([]int64(nil), x.GetData()...)}, nil
	case *ortgo.Scalar[float32]:
		return &Tensor{Shape: []int64{}, F32: []float32{x.GetData()}}, nil
	case *ortgo.Scalar[float64]:
		return &Tensor{Shape: []int64{}, F64: []float64{x.GetData()}}, nil
	case *ortgo.Scalar[int64]:
		return &Tensor{Shape: []int64{}, I64: []int64{x.GetData()}}, nil
	}
	return nil, fmt.Errorf("unsupported output value type %T", v)
}
