// The gradcam C++ library: explain pictures with a gradcam_model artifact (see explainer.h).
#pragma once

#include "gradcam/backend.h"
#include "gradcam/error.h"
#include "gradcam/explainer.h"
#include "gradcam/images.h"
#include "gradcam/metadata.h"
#include "gradcam/preprocessing.h"
#include "gradcam/version.h"
