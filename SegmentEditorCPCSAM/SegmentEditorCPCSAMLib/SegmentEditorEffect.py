"""CPC-SAM Segment Editor effect: prompts on a slice view -> the selected segment.

The prompts follow the model (``mrml.model_prompt_type``). Box models (LiteMedSAM, the default;
trained with boxes only): drag a box around the structure (a yellow rubber band shows it), or
click on a structure that the model already finds unprompted on that slice (its component is
boxed). Point models (SAM ViT): left click is a foreground point of the class chosen for the
selected segment, Shift + left click a background point (label 0); the points of the current
slice accumulate (a new slice, segment or class starts over). The slice is cut from the source
volume along the IJK axis closest to the view's normal (the IJK slice closest to the view),
segmented by ``Predictor.predict_slice_with_box`` / ``predict_slice_with_points`` of a model
trained by the CPC-SAM module, and written into the selected segment for that slice only
(undoable; the rest of the segment, earlier results and manual painting, is kept). With
"propagate", the neighbouring slices are segmented in turn from the previous slice's result (its
box, or its centre point) until a prediction is empty or N slices are done in each direction;
this runs one slice per timer tick, so the GUI stays responsive, shows the progress and can stop
it.

The geometry, the prompts, the propagation and the labelmap write are Qt-free and tested outside
Slicer with slicer-core: ``CPCSAMLib/slicer/effect_logic.py``.
"""

import functools
import logging
import os

import numpy as np
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect


# CPCSAMLib is importable here: installed, it sits in the scripted-modules folder, which Slicer puts
# on sys.path for every scripted module; from the source tree, the CPCSAM module (a dependency of
# SegmentEditorCPCSAM, so loaded first) puts the repository's top level on sys.path.
from CPCSAMLib.slicer import effect_logic  # noqa: E402
from CPCSAMLib.slicer import mrml as cpcsamMrml  # noqa: E402

__all__ = ["SegmentEditorEffect"]

PARAMETER_MODEL = "CPCSAM.ModelPath"
PARAMETER_CLASS = "CPCSAM.ClassName"
PARAMETER_PROPAGATE = "CPCSAM.Propagate"
PARAMETER_SLICES = "CPCSAM.PropagateSlices"
PARAMETER_DEVICE = "CPCSAM.Device"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Box- or point-prompted CPC-SAM segmentation of the selected segment."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "CPC-SAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.session = effect_logic.PointPromptSession()
        self._predictor = None
        self._predictorKey = None
        self._classes = []
        self._classesModel = None
        self._lastSegmentName = None
        self._propagation = None  # running propagation: dict(steps, masks, write, total)
        self._propagationTimer = None
        self._band = None  # the box being dragged (box models)
        self._windowKey = None
        self._window = None
        self._promptTypeKey = None
        self._promptTypeValue = "point"

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "Resources", "Icons", "SegmentEditorCPCSAM.png")
        if os.path.exists(iconPath):
            return qt.QIcon(iconPath)
        return qt.QIcon()

    def helpText(self):
        return """<html>Segment with a model trained by the CPC-SAM module.<br>
<b>Box models</b> (LiteMedSAM, the default): <b>drag</b> a box around the structure on a slice
view, or <b>click</b> on a structure the model already finds on that slice.
<b>Point models</b> (SAM ViT): <b>left click</b> adds a foreground point of the chosen class,
<b>Shift + left click</b> a background point; points on the same slice accumulate.<br>
The result replaces the segment on that slice only (Undo restores it; other slices are kept).
With <i>Propagate</i>, the neighbouring slices are segmented too, each prompted from the previous
slice's result (<i>Stop</i> ends it). The model defaults to the one trained last by the CPC-SAM
module.</html>"""

    # ------------------------------------------------------------------ options
    def setupOptionsFrame(self):
        import ctk

        self.modelPathEdit = ctk.ctkPathLineEdit()
        self.modelPathEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.modelPathEdit.nameFilters = ["CPC-SAM model (*.pt)", "All files (*)"]
        self.modelPathEdit.settingKey = "CPCSAM/Model"
        self.modelPathEdit.toolTip = "A model trained by the CPC-SAM module (model_best.pt)."
        self.scriptedEffect.addLabeledOptionsWidget("Model:", self.modelPathEdit)

        self.classComboBox = qt.QComboBox()
        self.classComboBox.toolTip = ("Class of the model that the selected segment receives. Chosen "
                                      "automatically when a class has the segment's name.")
        self.scriptedEffect.addLabeledOptionsWidget("Class:", self.classComboBox)

        self.deviceComboBox = qt.QComboBox()
        self.deviceComboBox.addItems(["auto", "cpu", "cuda"])
        self.deviceComboBox.toolTip = "auto: the GPU when PyTorch sees one, else the CPU."
        self.scriptedEffect.addLabeledOptionsWidget("Device:", self.deviceComboBox)

        self.propagateCheckBox = qt.QCheckBox("Propagate to neighbouring slices")
        self.propagateCheckBox.toolTip = ("Segment the next slices on both sides too, each prompted from the "
                                          "previous slice's result (its box, or its centre point for point "
                                          "models), until the result is empty or the number of slices is reached.")
        self.slicesSpinBox = qt.QSpinBox()
        self.slicesSpinBox.setRange(1, 500)
        self.slicesSpinBox.toolTip = "Maximum number of slices in each direction."
        propagateLayout = qt.QHBoxLayout()
        propagateLayout.addWidget(self.propagateCheckBox)
        propagateLayout.addWidget(qt.QLabel("slices:"))
        propagateLayout.addWidget(self.slicesSpinBox)
        self.scriptedEffect.addOptionsWidget(propagateLayout)

        self.resetPointsButton = qt.QPushButton("Clear points")
        self.resetPointsButton.toolTip = "Forget the points of the current slice (the segment is not changed)."
        self.stopButton = qt.QPushButton("Stop")
        self.stopButton.toolTip = "Stop the propagation (the slices done so far are kept)."
        self.stopButton.enabled = False
        buttonsLayout = qt.QHBoxLayout()
        buttonsLayout.addWidget(self.resetPointsButton)
        buttonsLayout.addWidget(self.stopButton)
        self.scriptedEffect.addOptionsWidget(buttonsLayout)
        self.progressBar = qt.QProgressBar()
        self.progressBar.visible = False
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)
        self._propagationTimer = qt.QTimer()
        self._propagationTimer.setInterval(0)
        self._propagationTimer.connect("timeout()", self._propagateOneSlice)

        self.modelPathEdit.connect("currentPathChanged(QString)", self.updateMRMLFromGUI)
        self.classComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.deviceComboBox.connect("currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.propagateCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)
        self.slicesSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)
        self.resetPointsButton.connect("clicked()", self.session.reset)
        self.stopButton.connect("clicked()", self._finishPropagation)

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault(PARAMETER_MODEL, "")
        self.scriptedEffect.setParameterDefault(PARAMETER_CLASS, "")
        self.scriptedEffect.setParameterDefault(PARAMETER_PROPAGATE, 0)
        self.scriptedEffect.setParameterDefault(PARAMETER_SLICES, 10)
        self.scriptedEffect.setParameterDefault(PARAMETER_DEVICE, "auto")

    def activate(self):
        # the model trained last by the CPC-SAM module (it adds each model to this path history)
        self.modelPathEdit.retrieveHistory()
        history = qt.QSettings().value("ctkPathLineEdit/CPCSAM/Model") or []
        if isinstance(history, str):  # a one-entry list reads back as a string
            history = [history]
        current = self.scriptedEffect.parameter(PARAMETER_MODEL)
        chosen = effect_logic.pick_model(current, list(history))
        if chosen and chosen != current:
            self.scriptedEffect.setParameter(PARAMETER_MODEL, chosen)

    def deactivate(self):
        self._finishPropagation()
        self.session.reset()
        self._removeBand()

    def _loadClasses(self, modelPath):
        if modelPath == self._classesModel:
            return
        self._classesModel = modelPath
        self._classes = []
        if modelPath and os.path.isfile(modelPath):
            try:
                self._classes = cpcsamMrml.model_classes(modelPath)
            except Exception:  # noqa: BLE001 - fall back to the checkpoint's card (needs torch)
                try:
                    from CPCSAMLib.checkpoint import load_checkpoint

                    card = load_checkpoint(modelPath)["model_card"]
                    self._classes = [{"name": c["name"], "value": c["value"]} for c in card["classes"]]
                except Exception as exc:  # noqa: BLE001
                    logging.warning(f"CPC-SAM: cannot read the classes of {modelPath}: {exc}")
        wasBlocked = self.classComboBox.blockSignals(True)
        self.classComboBox.clear()
        for c in self._classes:
            self.classComboBox.addItem(c["name"])
        self.classComboBox.blockSignals(wasBlocked)

    def updateGUIFromMRML(self):
        modelPath = self.scriptedEffect.parameter(PARAMETER_MODEL)
        for widget in (self.modelPathEdit, self.classComboBox, self.deviceComboBox, self.propagateCheckBox,
                       self.slicesSpinBox):
            widget.blockSignals(True)
        try:
            self.modelPathEdit.currentPath = modelPath
            self._loadClasses(modelPath)
            className = self.scriptedEffect.parameter(PARAMETER_CLASS)
            segmentName = self._selectedSegmentName()
            names = [c["name"] for c in self._classes]
            if segmentName != self._lastSegmentName:
                # a newly selected segment named after a class gets that class
                self._lastSegmentName = segmentName
                if segmentName in names:
                    className = segmentName
            self.classComboBox.setCurrentIndex(names.index(className) if className in names else 0)
            self.deviceComboBox.setCurrentIndex(max(0, self.deviceComboBox.findText(
                self.scriptedEffect.parameter(PARAMETER_DEVICE))))
            self.propagateCheckBox.checked = self.scriptedEffect.integerParameter(PARAMETER_PROPAGATE) != 0
            self.slicesSpinBox.value = self.scriptedEffect.integerParameter(PARAMETER_SLICES)
            self.slicesSpinBox.enabled = self.propagateCheckBox.checked
        finally:
            for widget in (self.modelPathEdit, self.classComboBox, self.deviceComboBox, self.propagateCheckBox,
                           self.slicesSpinBox):
                widget.blockSignals(False)
        self.resetPointsButton.visible = self._promptType(modelPath) != "box"  # boxes leave no points behind
        if not modelPath:
            self.statusLabel.text = "Choose a model trained by the CPC-SAM module."
        elif not self._classes:
            self.statusLabel.text = "The model's classes could not be read."
        elif self._promptType(modelPath) == "box":
            self.statusLabel.text = "Drag a box around the structure on a slice view (or click on a found one)."
        else:
            self.statusLabel.text = "Click on a slice view (Shift+click: background point)."

    def updateMRMLFromGUI(self, *args):
        self.scriptedEffect.setParameter(PARAMETER_MODEL, self.modelPathEdit.currentPath)
        if self.classComboBox.currentIndex >= 0:
            self.scriptedEffect.setParameter(PARAMETER_CLASS, self.classComboBox.currentText)
        self.scriptedEffect.setParameter(PARAMETER_DEVICE, self.deviceComboBox.currentText)
        self.scriptedEffect.setParameter(PARAMETER_PROPAGATE, 1 if self.propagateCheckBox.checked else 0)
        self.scriptedEffect.setParameter(PARAMETER_SLICES, self.slicesSpinBox.value)

    def _selectedSegmentName(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        if parameterSetNode is None or parameterSetNode.GetSegmentationNode() is None:
            return None
        segment = parameterSetNode.GetSegmentationNode().GetSegmentation().GetSegment(
            parameterSetNode.GetSelectedSegmentID() or "")
        return segment.GetName() if segment is not None else None

    # ------------------------------------------------------------------ interaction
    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.MouseMoveEvent:
            if self._band is None or self._band.viewWidget != viewWidget:
                return False
            self._band.update(callerInteractor.GetEventPosition())
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            if self._band is None:
                return False
            band = self._band
            self._removeBand()
            end = callerInteractor.GetEventPosition()
            return self._run(lambda: self.segmentFromBox(band.viewWidget, band.start, end))
        if eventId != vtk.vtkCommand.LeftButtonPressEvent:
            return False
        if callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False  # leave Ctrl/Alt clicks to Slicer
        if self._propagation is not None:
            self.statusLabel.text = "Propagation is running: wait for it or press Stop."
            return True
        xy = callerInteractor.GetEventPosition()
        if self._promptType(self.scriptedEffect.parameter(PARAMETER_MODEL)) == "box":
            if callerInteractor.GetShiftKey():
                return False  # no background prompt for boxes
            confirmed = self.scriptedEffect.confirmCurrentSegmentVisible()
            if confirmed in (self.scriptedEffect.NotConfirmed, self.scriptedEffect.ConfirmedWithDialog):
                # as Slicer's Draw effect: the dialog took the mouse, so this press does not start a box
                return True
            self._removeBand()
            self._band = BoxBand(self.scriptedEffect, viewWidget, xy)
            return True
        foreground = not callerInteractor.GetShiftKey()
        return self._run(lambda: self.segmentFromClick(viewWidget, xy, foreground))

    def _run(self, action):
        try:
            with slicer.util.WaitCursor():
                action()
        except Exception as exc:  # noqa: BLE001 - shown to the user, the event is consumed
            logging.exception("CPC-SAM effect failed")
            slicer.util.errorDisplay(f"CPC-SAM: {exc}")
        return True

    def _removeBand(self):
        if self._band is not None:
            self._band.remove()
            self._band = None

    def _promptType(self, modelPath):
        """``"box"`` or ``"point"`` for the chosen model (read from its config.json, cached)."""
        if not modelPath or not os.path.isfile(modelPath):
            return "point"  # no model: a click reports that one must be chosen
        key = (modelPath, os.path.getmtime(modelPath))
        if key != self._promptTypeKey:
            try:
                self._promptTypeValue = cpcsamMrml.model_prompt_type(modelPath)
            except Exception as exc:  # noqa: BLE001 - the click then reports the unreadable model
                logging.warning(f"CPC-SAM: cannot read the prompt type of {modelPath}: {exc}")
                self._promptTypeValue = "point"
            self._promptTypeKey = key
        return self._promptTypeValue

    def _sourceImage(self):
        return self.scriptedEffect.sourceVolumeImageData()  # Slicer >= 5.2 (5.8 is the oldest supported)

    def _predictorFor(self, modelPath, device):
        key = (modelPath, device, os.path.getmtime(modelPath))
        if self._predictorKey != key:
            from CPCSAMLib.infer import Predictor

            self.statusLabel.text = "Loading the model..."
            slicer.app.processEvents()
            self._predictor = Predictor.from_checkpoint(modelPath, device=device)
            self._predictorKey = key
        return self._predictor

    @staticmethod
    def _matrixToArray(vtkMatrix):
        return np.array([[vtkMatrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def _worldToSegmentation(self, segmentationNode, ras, normal):
        """RAS point and normal from world coordinates into the segmentation's frame."""
        transformNode = segmentationNode.GetParentTransformNode()
        if transformNode is None:
            return ras, normal
        transform = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, transformNode, transform)
        local = transform.TransformPoint(ras)
        localNormal = transform.TransformVectorAtPoint(ras, normal)
        return np.array(local), np.array(localNormal)

    def _target(self, viewWidget):
        """What a prompt on ``viewWidget`` segments: the selected segment, the model, its class for
        the segment, the source volume as a ``[K, J, I]`` array with its geometry, and the view."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        modelPath = self.scriptedEffect.parameter(PARAMETER_MODEL)
        if not modelPath or not os.path.isfile(modelPath):
            raise ValueError("choose a trained model file (model_best.pt) first")
        self._loadClasses(modelPath)
        className = self.classComboBox.currentText
        names = [c["name"] for c in self._classes]
        if className not in names:
            raise ValueError("choose the class for the selected segment")

        source = self._sourceImage()
        if source is None or source.GetPointData() is None or source.GetPointData().GetScalars() is None:
            raise ValueError("select a source volume in the Segment Editor")
        from vtk.util import numpy_support

        dims = source.GetDimensions()
        comps = source.GetNumberOfScalarComponents()
        volume = numpy_support.vtk_to_numpy(source.GetPointData().GetScalars())
        volume = volume.reshape((dims[2], dims[1], dims[0]) + ((comps,) if comps > 1 else ()))
        if comps > 1:  # RGB: luminance
            volume = volume[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        extent = source.GetExtent()
        imageToWorld = vtk.vtkMatrix4x4()
        source.GetImageToWorldMatrix(imageToWorld)
        sliceNode = viewWidget.sliceLogic().GetSliceNode()
        return {
            "segmentationNode": segmentationNode, "segmentId": parameterSetNode.GetSelectedSegmentID(),
            "modelPath": modelPath, "classIndex": names.index(className) + 1,  # 1..C in the model's order
            "className": className, "volume": volume, "volumeKey": (source.GetMTime(), tuple(dims), comps),
            "origin": (extent[0], extent[2], extent[4]),
            "imageToWorld": imageToWorld, "ijkToRas": self._matrixToArray(imageToWorld),
            "xyToRas": self._matrixToArray(sliceNode.GetXYToRAS()),
            "normal": self._matrixToArray(sliceNode.GetSliceToRAS())[:3, 2],
        }

    def _intensityWindow(self, target, predictor):
        """The intensity window of the whole source volume (``Predictor.intensity_window``), passed
        with each slice so that it is scaled as training scaled volumes; kept while the volume and
        the model stay the same (two numbers, not a scaled copy of the volume)."""
        key = (target["volumeKey"], self._predictorKey)
        if key != self._windowKey:
            self._window = predictor.intensity_window(target["volume"])
            self._windowKey = key
        return self._window

    def _ras(self, target, xy):
        """RAS (in the segmentation's frame) of a view position, and the view's normal there."""
        ras = (target["xyToRas"] @ np.array([xy[0], xy[1], 0.0, 1.0]))[:3]
        return self._worldToSegmentation(target["segmentationNode"], ras, target["normal"])

    def segmentFromClick(self, viewWidget, xy, foreground=True):
        """Point models: a click adds a point on its slice, which is then segmented."""
        target = self._target(viewWidget)
        ras, normal = self._ras(target, xy)
        volume, classIndex = target["volume"], target["classIndex"]
        located = effect_logic.locate_click(target["ijkToRas"], ras, normal, volume.shape, target["origin"])
        if located is None:
            raise ValueError("the click is outside the source volume")
        axis, index, (x, y) = located

        key = (target["segmentationNode"].GetID(), target["segmentId"], axis, index, classIndex, target["modelPath"])
        points = self.session.add(key, x, y, classIndex, foreground)
        if not self.session.has_foreground():
            self.statusLabel.text = "Background point kept; click inside the structure to add a foreground point."
            return

        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return  # the user did not confirm editing a hidden segment

        predictor = self._predictorFor(target["modelPath"], self.scriptedEffect.parameter(PARAMETER_DEVICE) or "auto")
        window = self._intensityWindow(target, predictor)

        def predict(s, points):
            return predictor.predict_slice_with_points(s, points, window=window)

        mask = effect_logic.predict_mask(predict, effect_logic.extract_slice(volume, axis, index), points, classIndex)
        self._writeAndPropagate(target, volume, axis, index, mask, predict, effect_logic.point_prompt,
                                f"{len(points)} point(s) on slice {index}: ")

    def segmentFromBox(self, viewWidget, start, end):
        """Box models: a drag from ``start`` to ``end`` (view positions) is a box on the press's
        slice; a click boxes the class's component under it in the slice's unprompted prediction."""
        target = self._target(viewWidget)
        rasStart, normal = self._ras(target, start)
        rasEnd, _ = self._ras(target, end)
        volume, classIndex = target["volume"], target["classIndex"]
        dragged = effect_logic.locate_drag(target["ijkToRas"], rasStart, rasEnd, normal, volume.shape, target["origin"])
        if dragged is None:
            raise ValueError("the box starts outside the source volume")
        axis, index, a, b = dragged
        predictor = self._predictorFor(target["modelPath"], self.scriptedEffect.parameter(PARAMETER_DEVICE) or "auto")
        window = self._intensityWindow(target, predictor)
        slice2d = effect_logic.extract_slice(volume, axis, index)
        box = effect_logic.box_from_corners(a, b)
        what = f"Box on slice {index}: "
        if box is None:  # a click
            labels = predictor.predict_slice(slice2d, self_prompt=False, window=window)
            box = effect_logic.box_at_click(labels, a[0], a[1], classIndex, margin=predictor.box_margin)
            if box is None:
                self.statusLabel.text = (f"The model finds no {target['className']} under the click on slice {index}: "
                                         "drag a box around the structure.")
                return
            what = f"Click on slice {index}, the {target['className']} found there boxed: "

        def predict(s, box):
            return predictor.predict_slice_with_box(s, box, classIndex, window=window)

        mask = effect_logic.predict_mask(predict, slice2d, box, classIndex)
        self._writeAndPropagate(target, volume, axis, index, mask, predict,
                                functools.partial(effect_logic.box_prompt, margin=predictor.box_margin), what)

    def _writeAndPropagate(self, target, volume, axis, index, mask, predict, promptFromMask, what):
        """Write slice ``index``'s result (undoable), then start the propagation (through the
        source ``volume``; ``predict`` scales its slices) if asked."""
        abstractEffect = slicer.qSlicerSegmentEditorAbstractEffect

        def write(masks):
            # replaces the segment on these slices only; the rest of the segment is kept
            effect_logic.write_slices_to_segment(
                lambda modifier, mode, extent: self.scriptedEffect.modifySelectedSegmentByLabelmap(
                    modifier, mode, list(extent)),
                abstractEffect.ModificationModeRemove, abstractEffect.ModificationModeAdd,
                volume.shape, axis, masks, target["origin"], target["imageToWorld"])

        self.scriptedEffect.saveStateForUndo()
        write({index: mask})
        self.statusLabel.text = what + ("segmented." if mask.any() else "nothing found.")
        slices = self.scriptedEffect.integerParameter(PARAMETER_SLICES) \
            if self.scriptedEffect.integerParameter(PARAMETER_PROPAGATE) else 0
        if slices > 0 and mask.any():
            steps = effect_logic.propagation_steps(predict, volume, axis, index, mask, target["classIndex"], slices,
                                                   prompt_from_mask=promptFromMask)
            self._propagation = {"steps": steps, "masks": {}, "write": write, "total": 2 * slices,
                                 "tried": 0, "index": index}
            self.progressBar.setRange(0, 2 * slices)
            self.progressBar.value = 0
            self.progressBar.visible = True
            self.stopButton.enabled = True
            self._propagationTimer.start()

    def _propagateOneSlice(self):
        """One model call per timer tick: the GUI stays responsive during a long propagation."""
        state = self._propagation
        if state is None:
            self._propagationTimer.stop()
            return
        try:
            index, mask = next(state["steps"])
        except StopIteration:
            self._finishPropagation()
            return
        except Exception as exc:  # noqa: BLE001 - shown to the user
            logging.exception("CPC-SAM propagation failed")
            self._finishPropagation()
            slicer.util.errorDisplay(f"CPC-SAM propagation: {exc}")
            return
        state["masks"][index] = mask
        state["tried"] += 1
        self.progressBar.value = min(state["tried"], state["total"])
        self.statusLabel.text = f"Propagating from slice {state['index']}: slice {index} ({len(state['masks'])} done)..."

    def _finishPropagation(self):
        """Write the propagated slices (one undoable step) and end the propagation."""
        if self._propagationTimer is not None:
            self._propagationTimer.stop()
        state, self._propagation = self._propagation, None
        if hasattr(self, "stopButton"):
            self.stopButton.enabled = False
            self.progressBar.visible = False
        if state is None or not state["masks"]:
            return
        masks = state["masks"]
        self.scriptedEffect.saveStateForUndo()
        state["write"](masks)
        self.statusLabel.text = (f"Slice {state['index']} and {len(masks)} propagated slice(s) "
                                 f"({min(masks)}..{max(masks)}) segmented.")


class BoxBand:
    """The rubber band of a box being dragged on one slice view (display XY coordinates), drawn
    as Slicer's Draw effect draws its outline: a 2D actor added through the scripted effect."""

    def __init__(self, scriptedEffect, viewWidget, xy):
        self.scriptedEffect, self.viewWidget, self.start = scriptedEffect, viewWidget, tuple(xy)
        self.points = vtk.vtkPoints()
        for _ in range(4):
            self.points.InsertNextPoint(xy[0], xy[1], 0.0)
        lines = vtk.vtkCellArray()
        lines.InsertNextCell(5)
        for i in (0, 1, 2, 3, 0):
            lines.InsertCellPoint(i)
        self.polyData = vtk.vtkPolyData()
        self.polyData.SetPoints(self.points)
        self.polyData.SetLines(lines)
        mapper = vtk.vtkPolyDataMapper2D()
        mapper.SetInputData(self.polyData)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(mapper)
        self.actor.GetProperty().SetColor(1, 1, 0)
        self.actor.GetProperty().SetLineWidth(1)
        scriptedEffect.addActor2D(viewWidget, self.actor)

    def update(self, xy):
        (x0, y0), (x1, y1) = self.start, xy
        for i, (x, y) in enumerate([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]):
            self.points.SetPoint(i, x, y, 0.0)
        self.points.Modified()
        self.polyData.Modified()
        self.viewWidget.sliceView().scheduleRender()

    def remove(self):
        self.scriptedEffect.removeActor2D(self.viewWidget, self.actor)
        self.viewWidget.sliceView().scheduleRender()
