"""MLflow models-from-code entry of a logged AxialNet (see packaged.py): no pickled Python object."""

import mlflow

from ctplatform.model.packaged import AxialNetModel

mlflow.models.set_model(AxialNetModel())
