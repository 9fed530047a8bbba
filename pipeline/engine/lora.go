package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"ortalign/internal/atomicfile"
	"ortalign/onnx"
	"ortalign/onnx/lora"
	"ortalign/onnx/onnxpb"
)

// Adapter is a parameter-efficient method (LoRA) plugged into the Engine through
// TrainConfig.Adapter: it turns the user's model into the model that trains, and says
// how the trained values fold back into the user's graph.
type Adapter interface {
	// Name is the method's name in logs and checkpoint settings ("lora").
	Name() string
	// Settings decide the update; checkpoints record them so that a resume with other
	// ones is refused.
	Settings() map[string]string
	// Apply returns the training forward built from m, which it must not change.
	Apply(m *onnx.Model) (*Adapted, error)
}

// Adapted is an adapter applied to a model.
type Adapted struct {
	// Model is the forward that trains: a copy of the user's model with the adapter in it.
	Model *onnx.Model
	// Trainable are the adapter's initializers of Model, the only ones that train.
	Trainable []string
	// Fold writes trained values (by initializer name; missing ones keep Model's) into
	// dst, a copy of the user's model, keeping its graph and layout.
	Fold func(dst *onnx.Model, values map[string][]float32) error
	// Save writes the adapter alone to dir (nil: the method has no such format).
	Save func(dir string, values map[string][]float32) error
	// SaveDir, when set, is where Engine.Export also saves the adapter.
	SaveDir string
}

// SaveAdapter writes the engine's adapter with its current values to dir (for LoRA,
// PEFT's adapter_model.safetensors and adapter_config.json).
func (e *Engine[T]) SaveAdapter(dir string) error {
	if e.adapted == nil || e.adapted.Save == nil {
		return fmt.Errorf("save adapter: the engine trains no adapter that can be saved alone")
	}
	if err := e.adapted.Save(dir, e.values()); err != nil {
		return fmt.Errorf("save adapter to %s: %w", dir, err)
	}
	return nil
}

// LoRA defaults, PEFT's LoraConfig's.
const (
	DefaultLoRAAlpha = 8
)

// LoRA is low-rank adaptation as Hugging Face PEFT does it (LoraConfig with bias "none",
// use_rslora and use_dora off): every targeted linear layer y = x·W gains
// (α/r)·((x·Aᵀ)·Bᵀ), A [r, in] initialised uniform(−1/√in, 1/√in) from Seed, B zero; only
// A and B train. See package onnx/lora for the graph surgery and the module paths.
type LoRA struct {
	R     int     // rank (> 0)
	Alpha float64 // lora_alpha; the update is scaled by Alpha/R
	// Dropout is lora_dropout. Only 0 is supported: dropout in training mode draws random
	// masks, and the training-graph generator has no gradient rule for ONNX's Dropout in
	// training mode.
	Dropout float64
	// TargetModules select the layers by module name, PEFT's way (a module path equal to
	// the name or ending in "."+name); empty means lora.DefaultTargetModules, and
	// lora.AllLinear every linear layer but the output layer.
	TargetModules []string
	Seed          int64 // seed of A's initialisation
	// BaseModel is adapter_config.json's base_model_name_or_path, where PEFT's
	// AutoPeftModelForCausalLM loads the base model from; PEFTBaseModel gives a default.
	BaseModel string
	// SaveDir, when set, makes Engine.Export also save the adapter there (SaveAdapter).
	SaveDir string
}

// Validate reports settings out of range. Messages name settings, not CLI flags.
func (l LoRA) Validate() error {
	switch {
	case l.R <= 0:
		return fmt.Errorf("LoRA rank must be positive, got %d", l.R)
	case !(l.Alpha > 0):
		return fmt.Errorf("LoRA alpha must be positive, got %g", l.Alpha)
	case l.Dropout != 0:
		return fmt.Errorf("LoRA dropout %g is not supported, only 0: dropout in training mode needs random masks, and the training-graph generator has no gradient rule for Dropout in training mode", l.Dropout)
	}
	for _, m := range l.TargetModules {
		if m == "" {
			return fmt.Errorf("LoRA target modules: empty name")
		}
	}
	return nil
}

// Name implements Adapter.
func (LoRA) Name() string { return "lora" }

// Settings implements Adapter: rank, alpha, dropout, target modules and init seed.
func (l LoRA) Settings() map[string]string {
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	targets := strings.Join(l.TargetModules, ",")
	if targets == "" {
		targets = strings.Join(lora.DefaultTargetModules, ",")
	}
	return map[string]string{
		"r": strconv.Itoa(l.R), "lora_alpha": f(l.Alpha), "lora_dropout": f(l.Dropout),
		"target_modules": targets, "init_seed": strconv.FormatInt(l.Seed, 10),
	}
}

// Apply implements Adapter: a copy of m with adapters on the targeted layers.
func (l LoRA) Apply(m *onnx.Model) (*Adapted, error) {
	if err := l.Validate(); err != nil {
		return nil, err
	}
	all, err := lora.FindTargets(m)
	if err != nil {
		return nil, err
	}
	targets, err := lora.Select(all, l.TargetModules)
	if err != nil {
		return nil, err
	}
	fwd := shareWeights(m)
	cfg := lora.Config{R: l.R, Alpha: l.Alpha, Seed: l.Seed}
	adapters, err := lora.Insert(fwd, targets, cfg)
	if err != nil {
		return nil, err
	}
	ad := &Adapted{Model: fwd, SaveDir: l.SaveDir}
	for _, a := range adapters {
		ad.Trainable = append(ad.Trainable, a.A, a.B)
	}
	// complete fills in values the engine does not train (frozen by TrainConfig.Freeze).
	complete := func(values map[string][]float32) (map[string][]float32, error) {
		out := make(map[string][]float32, len(ad.Trainable))
		for _, name := range ad.Trainable {
			if v, ok := values[name]; ok {
				out[name] = v
				continue
			}
			v, err := onnx.TensorFloats(onnx.Initializer(fwd.Graph(), name))
			if err != nil {
				return nil, err
			}
			out[name] = v
		}
		return out, nil
	}
	ad.Fold = func(dst *onnx.Model, values map[string][]float32) error {
		v, err := complete(values)
		if err != nil {
			return err
		}
		return lora.Merge(dst, adapters, cfg.Scale(), v)
	}
	ad.Save = func(dir string, values map[string][]float32) error {
		v, err := complete(values)
		if err != nil {
			return err
		}
		return l.save(dir, all, adapters, v)
	}
	return ad, nil
}

// PEFTName is the name PEFT's save_pretrained gives a LoRA tensor of a causal LM:
// base_model.model.<module path>.lora_A.weight (which is "A" or "B").
func PEFTName(module, which string) string {
	return "base_model.model." + module + ".lora_" + which + ".weight"
}

// Files of a saved PEFT adapter.
const (
	AdapterWeightsFile = "adapter_model.safetensors"
	AdapterConfigFile  = "adapter_config.json"
)

// save writes PEFT's adapter files to dir, atomically each.
func (l LoRA) save(dir string, all []lora.Target, adapters []lora.Adapter, values map[string][]float32) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var tensors []lora.Tensor
	var targets []lora.Target
	fanInFanOut := false
	for _, a := range adapters {
		tensors = append(tensors,
			lora.Tensor{Name: PEFTName(a.Module, "A"), Shape: []int64{int64(a.R), a.In}, Data: values[a.A]},
			lora.Tensor{Name: PEFTName(a.Module, "B"), Shape: []int64{a.Out, int64(a.R)}, Data: values[a.B]})
		targets = append(targets, a.Target)
		// GPT-2's Conv1D layers keep their weight as [in, out]; PEFT wants to be told.
		name := a.Module[strings.LastIndex(a.Module, ".")+1:]
		fanInFanOut = fanInFanOut || name == "c_attn" || name == "c_fc" || name == "c_proj"
	}
	err := atomicfile.WriteFile(filepath.Join(dir, AdapterWeightsFile), func(w io.Writer) error {
		return lora.WriteSafetensors(w, tensors, map[string]string{"format": "pt"})
	})
	if err != nil {
		return err
	}
	cfg := map[string]any{
		"peft_type":               "LORA",
		"task_type":               "CAUSAL_LM",
		"base_model_name_or_path": l.BaseModel,
		"r":                       l.R,
		"lora_alpha":              l.Alpha,
		"lora_dropout":            PyFloat(l.Dropout),
		"target_modules":          peftTargets(all, targets),
		"bias":                    "none",
		"fan_in_fan_out":          fanInFanOut,
		"inference_mode":          true,
		"init_lora_weights":       true,
		"modules_to_save":         nil,
		"layers_to_transform":     nil,
		"layers_pattern":          nil,
		"rank_pattern":            map[string]any{},
		"alpha_pattern":           map[string]any{},
		"use_rslora":              false,
		"use_dora":                false,
		"revision":                nil,
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, AdapterConfigFile), func(w io.Writer) error {
		_, err := w.Write(append(b, '\n'))
		return err
	})
}

// pyFloat is a float64 that JSON-encodes as a float even when integral (0.0, not 0), so
// that Python reads a float where PEFT's LoraConfig declares one.
type PyFloat float64

// MarshalJSON implements json.Marshaler.
func (f PyFloat) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(float64(f))
	if err != nil {
		return nil, err
	}
	if !bytes.ContainsAny(b, ".eE") {
		b = append(b, ".0"...)
	}
	return b, nil
}

// PEFTBaseModel is the default base_model_name_or_path of a LoRA adapter trained on the
// model at modelPath with the tokenizer at tokenizerPath ("" if none): the name_or_path
// recorded in the tokenizer_config.json beside the tokenizer (transformers writes there
// the Hub id or folder the tokenizer was loaded from), else the absolute path of the
// model's folder. PEFT's AutoPeftModelForCausalLM loads the base model from this value.
func PEFTBaseModel(modelPath, tokenizerPath string) (string, error) {
	if tokenizerPath != "" {
		path := filepath.Join(filepath.Dir(tokenizerPath), "tokenizer_config.json")
		b, err := os.ReadFile(path)
		switch {
		case err == nil:
			var cfg struct {
				NameOrPath any `json:"name_or_path"`
			}
			if err := json.Unmarshal(b, &cfg); err != nil {
				return "", fmt.Errorf("%s: %w", path, err)
			}
			if s, ok := cfg.NameOrPath.(string); ok && strings.TrimSpace(s) != "" {
				return s, nil
			}
		case !errors.Is(err, os.ErrNotExist):
			return "", err
		}
	}
	dir, err := filepath.Abs(filepath.Dir(modelPath))
	if err != nil {
		return "", fmt.Errorf("base model folder of %s: %w", modelPath, err)
	}
	return dir, nil
}

// peftTargets is adapter_config.json's target_modules: the layers' names (q_proj) when
// they select exactly the adapted layers among all, else their full module paths.
func peftTargets(all, chosen []lora.Target) []string {
	names := lora.ModuleNames(chosen)
	n := 0
	for _, t := range all {
		for _, name := range names {
			if lora.Matches(t.Module, name) {
				n++
				break
			}
		}
	}
	if n == len(chosen) {
		return names
	}
	paths := make([]string, len(chosen))
	for i, t := range chosen {
		paths[i] = t.Module
	}
	return paths
}

// shareWeights returns a copy of m that shares m's initializer tensors instead of copying
// them: the adapted forward adds nodes and initializers but changes none of m's, and the
// training graph is built from a copy of it, so the weights are not held once more.
func shareWeights(m *onnx.Model) *onnx.Model {
	g := m.Graph()
	inits := g.Initializer
	g.Initializer = nil
	p := proto.Clone(m.Proto()).(*onnxpb.ModelProto)
	g.Initializer = inits
	p.Graph.Initializer = slices.Clone(inits)
	return onnx.NewModel(p)
}
