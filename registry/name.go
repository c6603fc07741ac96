package registry

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Name is a global network service (or endpoint) name: Service@Domain. An
// empty Domain means the caller's own domain.
type Name struct {
	Service string
	Domain  string
}

// ErrInvalidName wraps every complaint about a name.
var ErrInvalidName = errors.New("invalid name")

// ParseName parses "service" or "service@domain". The service is a DNS label
// and the domain a DNS name, both in lower case.
func ParseName(s string) (Name, error) {
	service, domain, global := strings.Cut(s, "@")
	if global && strings.Contains(domain, "@") {
		return Name{}, fmt.Errorf("%w: %q has more than one '@'", ErrInvalidName, s)
	}
	if err := ValidateLabel(service); err != nil {
		return Name{}, fmt.Errorf("%w %q: service %v", ErrInvalidName, s, err)
	}
	if global {
		if domain == "" {
			return Name{}, fmt.Errorf("%w %q: empty domain after '@' (write service@domain, or just service for your own domain)", ErrInvalidName, s)
		}
		if err := ValidateDomain(domain); err != nil {
			return Name{}, fmt.Errorf("%w %q: %v", ErrInvalidName, s, err)
		}
	}
	return Name{Service: service, Domain: domain}, nil
}

// String is "service" or "service@domain".
func (n Name) String() string {
	if n.Domain == "" {
		return n.Service
	}
	return n.Service + "@" + n.Domain
}

// ValidateLabel checks a DNS label as RFC 1123 and Kubernetes spell it:
// 1 to 63 lower-case letters, digits and '-', not starting or ending in '-'.
func ValidateLabel(l string) error {
	switch {
	case l == "":
		return errors.New("is empty")
	case len(l) > 63:
		return fmt.Errorf("%q is %d characters long; a DNS label has at most 63", l, len(l))
	case l[0] == '-' || l[len(l)-1] == '-':
		return fmt.Errorf("%q starts or ends with '-'", l)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if c >= 'A' && c <= 'Z' {
			return fmt.Errorf("%q has upper case %q; names are lower case", l, c)
		}
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return fmt.Errorf("%q has %q; use lower-case letters, digits and '-'", l, c)
		}
	}
	return nil
}

// ValidateDomain checks a domain name: dot-separated DNS labels, at most 253
// characters, no trailing dot.
func ValidateDomain(d string) error { return dnsName("domain", d) }

// ValidateEndpointName checks an endpoint name: like a Kubernetes object
// name, dot-separated DNS labels of at most 253 characters in all.
func ValidateEndpointName(n string) error { return dnsName("endpoint name", n) }

// dnsName checks s, a what, as dot-separated DNS labels.
func dnsName(what, s string) error {
	if s == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(s) > 253 {
		return fmt.Errorf("%s %q is %d characters long; at most 253", what, s, len(s))
	}
	for i, label := range strings.Split(s, ".") {
		if label == "" {
			return fmt.Errorf("%s %q: empty label (at position %d)", what, s, i+1)
		}
		if err := ValidateLabel(label); err != nil {
			return fmt.Errorf("%s %q: label %v", what, s, err)
		}
	}
	return nil
}

// ValidateLabels checks label keys and values as Kubernetes does: a key is
// an optional DNS-name prefix and '/', then a name; names and values are at
// most 63 letters, digits, '-', '_' and '.', beginning and ending with a
// letter or digit (a value may be empty).
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels, at most %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		name := k
		if prefix, rest, ok := strings.Cut(k, "/"); ok {
			if err := ValidateDomain(prefix); err != nil {
				return fmt.Errorf("label key %q: prefix: %v", k, err)
			}
			name = rest
		}
		if name == "" {
			return fmt.Errorf("label key %q: empty name", k)
		}
		if err := labelValue(name); err != nil {
			return fmt.Errorf("label key %q: %v", k, err)
		}
		if v != "" {
			if err := labelValue(v); err != nil {
				return fmt.Errorf("label %s=%q: %v", k, v, err)
			}
		}
	}
	return nil
}

// MaxLabels bounds the labels of an endpoint, a client or a selector.
const MaxLabels = 64

func labelValue(s string) error {
	if len(s) > 63 {
		return fmt.Errorf("%d characters long; at most 63", len(s))
	}
	alnum := func(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' }
	if !alnum(s[0]) || !alnum(s[len(s)-1]) {
		return errors.New("must begin and end with a letter or digit")
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !alnum(c) && c != '-' && c != '_' && c != '.' {
			return fmt.Errorf("has %q; use letters, digits, '-', '_' and '.'", c)
		}
	}
	return nil
}

// ParseLabels parses "k=v,k2=v2" as the command line spells labels.
func ParseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return labels, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("labels %q: %q is not key=value", s, kv)
		}
		labels[k] = v
	}
	if err := ValidateLabels(labels); err != nil {
		return nil, fmt.Errorf("labels %q: %w", s, err)
	}
	return labels, nil
}

// FormatLabels spells labels as ParseLabels reads them, keys sorted.
func FormatLabels(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}
