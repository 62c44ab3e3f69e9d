// Package virttemplate is a stand-in for kubevirt.io/virt-template-client-go/virttemplate v0.2.0.
package virttemplate

import (
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"

	"kubevirt.io/virt-template-api/core/v1beta1"
)

type TemplateV1beta1Client struct{ restClient rest.Interface }

func (c *TemplateV1beta1Client) RESTClient() rest.Interface { return c.restClient }

type Clientset struct{ templateV1beta1 *TemplateV1beta1Client }

func (c *Clientset) TemplateV1beta1() *TemplateV1beta1Client { return c.templateV1beta1 }

func NewForConfig(c *rest.Config) (*Clientset, error) {
	scheme := runtime.NewScheme()
	if err := v1beta1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	config := *c
	config.GroupVersion = &v1beta1.SchemeGroupVersion
	config.APIPath = "/apis"
	config.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if config.UserAgent == "" {
		config.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(&config)
	if err != nil {
		return nil, err
	}
	return &Clientset{templateV1beta1: &TemplateV1beta1Client{restClient: rc}}, nil
}
