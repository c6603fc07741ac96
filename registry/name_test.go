package registry

import (
	"errors"
	"strings"
	"testing"
)

func TestParseName(t *testing.T) {
	good := map[string]Name{
		"svc":                     {Service: "svc"},
		"svc@dc.marsha.example":   {Service: "svc", Domain: "dc.marsha.example"},
		"a-1@b":                   {Service: "a-1", Domain: "b"},
		strings.Repeat("a", 63):   {Service: strings.Repeat("a", 63)},
		"secure-intranet@x.y.z.w": {Service: "secure-intranet", Domain: "x.y.z.w"},
	}
	for in, want := range good {
		got, err := ParseName(in)
		if err != nil || got != want {
			t.Errorf("ParseName(%q) = %+v, %v; want %+v", in, got, err, want)
		}
		if got.String() != in {
			t.Errorf("%+v.String() = %q, want %q", got, got.String(), in)
		}
	}
	bad := map[string]string{
		"svc@":                                   "empty domain",
		"@dom":                                   "service is empty",
		"a@b@c":                                  "more than one '@'",
		"Svc":                                    "upper case",
		"svc@Dom.example":                        "upper case",
		strings.Repeat("a", 64):                  "at most 63",
		"svc@a..b":                               "empty label",
		"svc@a.b.":                               "empty label",
		"-svc":                                   "starts or ends with '-'",
		"svc@a_b":                                `has '_'`,
		"":                                       "is empty",
		"svc@" + strings.Repeat("a.", 127) + "a": "at most 253",
	}
	for in, want := range bad {
		_, err := ParseName(in)
		if err == nil || !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseName(%q) = %v; want an error saying %q", in, err, want)
		}
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels("app=firewall, tier=edge,example.com/zone=a")
	if err != nil || len(got) != 3 || got["app"] != "firewall" || got["example.com/zone"] != "a" {
		t.Errorf("got %v, %v", got, err)
	}
	for in, want := range map[string]string{
		"app":           "not key=value",
		"=x":            "not key=value",
		"app=fire wall": "has ' '",
		"a/b/c=x":       "has '/'",
	} {
		if _, err := ParseLabels(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseLabels(%q) = %v; want %q", in, err, want)
		}
	}
}

func FuzzParseName(f *testing.F) {
	for _, s := range []string{"svc", "svc@dc.marsha.example", "a@b@c", "@", "svc@", "Svc@x", "a-@b", "x@a..b", "\x00@\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseName(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidName) {
				t.Fatalf("error %v does not wrap ErrInvalidName", err)
			}
			return
		}
		// A parsed name prints back to its input and parses to itself.
		if n.String() != s {
			t.Fatalf("ParseName(%q).String() = %q", s, n.String())
		}
		if again, err := ParseName(n.String()); err != nil || again != n {
			t.Fatalf("reparse of %q: %+v, %v", s, again, err)
		}
		if len(n.Service) > 63 || strings.ToLower(s) != s {
			t.Fatalf("accepted %q", s)
		}
	})
}
