package objective

import (
	"math"
	"strings"
	"testing"
)

// TestCPOValidate: unknown losses and out-of-range or inapplicable settings are errors
// naming the setting; TRL's configurations pass.
func TestCPOValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  CPO
		want string
	}{
		{CPO{Loss: "kto_pair", Beta: 0.1}, "unknown loss"},
		{CPO{Beta: 0}, "beta"},
		{CPO{Beta: math.NaN()}, "beta"},
		{CPO{Beta: 0.1, Alpha: -1}, "cpo alpha"},
		{CPO{Beta: 0.1, Alpha: math.Inf(1)}, "cpo alpha"},
		{CPO{Beta: 0.1, SimPOGamma: 0.5}, "simpo gamma"},
		{CPO{Loss: CPOSimPO, Beta: 2, SimPOGamma: math.NaN()}, "simpo gamma"},
		{CPO{Loss: CPOHinge, Beta: 0.1, LabelSmoothing: 0.1}, "label smoothing"},
		{CPO{Loss: CPOIPO, Beta: 0.1, LabelSmoothing: 0.1}, "label smoothing"},
		{CPO{Beta: 0.1, LabelSmoothing: 0.5}, "label smoothing"},
	} {
		if err := c.cfg.Validate(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", c.cfg, err, c.want)
		}
	}
	for _, c := range []CPO{
		{Beta: DefaultCPOBeta, Alpha: DefaultCPOAlpha},
		{Loss: CPOSimPO, Beta: 2, SimPOGamma: DefaultSimPOGamma, LabelSmoothing: 0.1},
		{Loss: CPOHinge, Beta: 0.1, Alpha: 0},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// TestCPOSettings: a checkpoint records the loss type even when it was left at its
// default, so that a resume with another loss is refused.
func TestCPOSettings(t *testing.T) {
	a := CPO{Beta: 0.1, Alpha: 1}.Settings()["cpo"]
	b := CPO{Loss: CPOSigmoid, Beta: 0.1, Alpha: 1}.Settings()["cpo"]
	if a != b || !strings.Contains(a, `"loss_type":"sigmoid"`) {
		t.Errorf("settings %s and %s", a, b)
	}
	if c := (CPO{Loss: CPOHinge, Beta: 0.1, Alpha: 1}).Settings()["cpo"]; c == a {
		t.Errorf("hinge and sigmoid record the same settings %s", c)
	}
}
